"""The generated texture set (pipeline/textures.py) and bench/learn.py's --smoke run."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.color import rgb_to_lab
from pipeline.splits import list_split
from pipeline.textures import TEXTURES, generate_textures, texture_image

REPO = Path(__file__).resolve().parents[1]


def test_each_texture_has_its_own_colour_and_brightness_says_nothing_of_it():
    names = list(TEXTURES)
    hues, lightness = {n: [] for n in names}, {n: [] for n in names}
    for i in range(40):
        rgb, kinds = texture_image(48, np.random.default_rng([7, i]))
        lab = rgb_to_lab(rgb)
        for k in np.unique(kinds):
            mask = kinds == k
            a, b = lab[..., 1][mask].mean(), lab[..., 2][mask].mean()
            hues[names[k]].append(math.degrees(math.atan2(b, a)) % 360)
            lightness[names[k]].append(lab[..., 0][mask].mean())
    for name, (hue, chroma) in TEXTURES.items():
        assert len(hues[name]) >= 5, name
        off = (np.array(hues[name]) - hue + 180) % 360 - 180
        assert np.abs(off).max() < 12, (name, off)                     # the texture's hue, within the jitter
    means = [np.mean(v) for v in lightness.values()]
    assert max(means) - min(means) < 8, means                         # no texture is brighter than another


def test_generate_textures_layout_idempotence_and_new_layouts_held_out(tmp_path):
    dest = tmp_path / "tex"
    out = generate_textures(dest, n_train=5, n_val=3, size=32, seed=1)
    assert out["created"] is True and list_split(dest, "train") == [f"train/train_{i:05d}.png" for i in range(5)]
    assert len(list_split(dest, "val")) == 3
    train = [np.asarray(Image.open(dest / p)) for p in list_split(dest, "train")]
    val = [np.asarray(Image.open(dest / p)) for p in list_split(dest, "val")]
    assert all(v.shape == (32, 32, 3) for v in train + val)
    assert not any(np.array_equal(t, v) for t in train for v in val)
    assert generate_textures(dest, n_train=5, n_val=3, size=32, seed=1)["created"] is False
    with pytest.raises(FileExistsError, match="made with"):
        generate_textures(dest, n_train=6, n_val=3, size=32, seed=1)
    with pytest.raises(ValueError):
        generate_textures(tmp_path / "x", n_train=0, n_val=3)


def test_learn_bench_smoke_runs_the_whole_pipeline_and_prints_its_json():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "learn.py"), "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["bench"], result["goal"], result["smoke"]) == ("learn", 0.5, True)
    for arch in ("fcn32s", "fcn16s"):
        r = result["rows"][arch]
        assert r["n_images"] == 4 and 0 < r["gray_auc"] < r["oracle_auc"] <= 100
        assert r["gap_closed_auc"] == pytest.approx((r["model_auc"] - r["gray_auc"]) /
                                                    (r["oracle_auc"] - r["gray_auc"]), abs=2e-3)
    assert result["value"] == result["rows"]["fcn16s"]["gap_closed_auc"] and result["cpu_s"] > 0
