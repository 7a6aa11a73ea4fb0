"""Benches that cannot rot: bench/gpu_train.py's --smoke run (seconds, CPU or GPU) trains both
archs through the real loader and prints the bench JSON line, and without CUDA the full run is a
no-op; bench/many_shards.py on a few tiny shards, with --baseline; bench/preprocess.py with a
what-if at 32 px."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_train.py"


def last_json_line(*args, script=SCRIPT):
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_train_smoke_reports_every_combination():
    result = last_json_line("--smoke")
    assert {"bench", "value", "unit", "goal", "rows"} <= set(result)
    assert (result["bench"], result["unit"], result["goal"]) == ("gpu_train", "img/s", 800)
    rows, skipped = result["rows"], result["skipped"]
    assert {r["arch"] for r in rows} == {"fcn32s", "fcn16s"}
    assert len(rows) + len(skipped) == 4                      # 2 archs x (fp32, bf16)
    ran = {r["precision"] for r in rows}                      # both, unless this CPU lacks bf16 kernels
    assert ran == {"fp32", "bf16"} or (ran == {"fp32"} and all("bf16" in s["why"] for s in skipped))
    for r in rows:
        assert math.isfinite(r["img_per_s"]) and r["img_per_s"] > 0
        assert r["steps"] == 2 and r["batch"] == 2
        assert 0 < r["data_wait_frac"] < 1                   # a worker process fed every step
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert (r["peak_gib"] is None) == (not torch.cuda.is_available())
    # the headline (fcn16s, bf16, channels_last) is the value; where bf16 autocast does not work
    # it is skipped and the value is null
    headline = [r for r in rows if (r["arch"], r["precision"], r["format"]) == ("fcn16s", "bf16", "channels_last")]
    bf16_skipped = [c for c in skipped if c["precision"] == "bf16"]
    assert len(headline) + len(bf16_skipped) >= 1
    if bf16_skipped:
        assert headline == [] and result["value"] is None
    else:
        assert len(headline) == 1 and result["value"] == headline[0]["img_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the full run would run")
def test_gpu_train_without_cuda_is_a_null_result():
    result = last_json_line()
    assert result["bench"] == "gpu_train" and result["value"] is None


def test_many_shards_tiny_run_with_a_baseline():
    # this checkout as its own baseline: the same loader code timed twice in the same rounds
    result = last_json_line("--shards", "40", "--sizes", "32", "--per-shard", "4", "--samples", "100",
                            "--before-samples", "40", "--rounds", "2", "--baseline", str(REPO),
                            script=REPO / "bench" / "many_shards.py")
    assert (result["bench"], result["goal"]) == ("many_shards", 0.8)
    px = result["px32"]
    assert px["n_images"] == 160 and px["images_per_shard"] == 4
    for key in ("many_samples_per_s", "one_samples_per_s", "baseline_many_samples_per_s",
                "baseline_one_samples_per_s"):
        assert px[key] > 0, key
    assert result["value"] == px["ratio"] > 0


def test_preprocess_tiny_run_with_the_cms_what_if():
    result = last_json_line("--n", "4", "--chunk", "2", "--rounds", "1", "--im-size", "32", "--k", "4",
                            "--what-if", "cms", script=REPO / "bench" / "preprocess.py")
    assert (result["bench"], result["goal"]) == ("preprocess", 0.7)
    assert result["value"] > 0 and result["what_if_cms_ratio"] > 0 and result["plain_rgb_equals_ours"]
    err = result["what_if_cms_error_vs_lab_planes"]                              # LittleCMS: D50, not D65
    assert 0 < err["ab_mean"] < 3 and err["L_max"] < 3
