"""Decoders and the `colorize-fcn colorize` command (CPU, fast: an untrained tiny model)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.color import ab_to_hue_chroma, hue_chroma_to_ab, rgb_to_lab
from pipeline.colorize import (ModelError, collect_inputs, load_colour_model, merge_lightness)
from pipeline.decode import cluster_centres_ab, decode
from pipeline.gmm import save_gmm, uniform_grid

ROOT = Path(__file__).resolve().parents[1]
K, SIZE = 4, 32


def _gmm(hues=(0.05, 0.3, 0.6, 0.95), chroma=0.25):
    k = len(hues)
    return {"weights": np.full(k, 1 / k), "means": np.array([[h, chroma] for h in hues]),
            "covariances": np.tile(np.eye(2) * 1e-3, (k, 1, 1))}


# ----------------------------------------------------------------------------- decoders
def test_one_hot_posterior_decodes_to_that_clusters_colour():
    gmm = _gmm()
    centres = cluster_centres_ab(gmm)
    np.testing.assert_allclose(centres, hue_chroma_to_ab(gmm["means"]), atol=1e-5)
    for k in range(K):
        post = np.zeros((K, 3, 5), np.float32)
        post[k] = 1
        for method, t in (("max", 1), ("mean", 1), ("annealed", 0.38), ("annealed", 0.05)):
            ab = decode(post, centres, method, t)
            assert ab.shape == (2, 3, 5)
            np.testing.assert_allclose(ab, np.broadcast_to(centres[k][:, None, None], (2, 3, 5)), atol=1e-4)


def test_averaging_hues_either_side_of_red_gives_red_not_cyan():
    gmm = _gmm(hues=(0.05, 0.95, 0.5, 0.25))     # +-18 degrees around red (hue 0 == 1)
    centres = cluster_centres_ab(gmm)
    post = np.zeros((4, 1, 1), np.float32)
    post[0] = post[1] = 0.5
    for method in ("mean", "annealed"):
        ab = decode(post, centres, method, 0.38)[:, 0, 0]
        hue = ab_to_hue_chroma(ab[0], ab[1])[0]
        assert ab[0] > 0 and abs(ab[1]) < 1e-3, ab                  # on the +a axis: red
        assert min(hue, 1 - hue) < 1e-4                              # hue 0, not the linear mean 0.5 (cyan)


def test_annealed_tends_to_max_as_t_goes_to_zero_and_equals_mean_at_one():
    rng = np.random.default_rng(0)
    post = rng.dirichlet(np.ones(K), size=(6, 7)).transpose(2, 0, 1).astype(np.float32)   # (K, 6, 7)
    centres = cluster_centres_ab(_gmm())
    np.testing.assert_allclose(decode(post, centres, "annealed", 1.0), decode(post, centres, "mean"), atol=1e-4)
    # how fast a pixel converges depends on its top-two ratio (here >= 1.0074: ratio^(1/T) must be large)
    top2 = np.sort(post, axis=0)[-2:]
    assert (top2[1] / top2[0]).min() > 1.007
    errors = [np.abs(decode(post, centres, "annealed", t) - decode(post, centres, "max")).max()
              for t in (0.5, 0.1, 0.01, 1e-3, 2e-4)]
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-3, errors
    # batched torch input gives the same as numpy, on the input's device/type
    batched = decode(torch.from_numpy(post)[None].repeat(2, 1, 1, 1), centres, "annealed", 0.38)
    assert isinstance(batched, torch.Tensor) and batched.shape == (2, 2, 6, 7)
    np.testing.assert_allclose(batched[1].numpy(), decode(post, centres, "annealed", 0.38), atol=1e-5)
    with pytest.raises(ValueError, match="unknown decoder"):
        decode(post, centres, "median")


# ----------------------------------------------------------------------------- a run to colorize with
def _fake_run(folder, gmm=None, where="run", mean_L=50.0):
    """A run folder as train.loop writes it (best.pt + config.json), untrained weights."""
    from models.fcn import build_model, model_settings
    from train.checkpoint import save_checkpoint
    torch.manual_seed(0)
    model = build_model("fcn32s", K, 1 / 16)
    cfg = {"im_size": SIZE, "binning": "soft", "n_clusters": K}
    run = folder / "runs" / "fcn32s-c102-abc"
    run.mkdir(parents=True)
    save_checkpoint(run / "best.pt", {"model": model.state_dict(), "model_settings": model_settings(model),
                                      "arch": "fcn32s", "cfg": cfg, "iteration": 1})
    (run / "config.json").write_text(json.dumps({"cfg": cfg, "data": {"mean_L": mean_L}}))
    gmm = _gmm() if gmm is None else gmm
    if where == "run":
        save_gmm(run / "gmm.npz", gmm)
    elif where == "evaluate":
        save_gmm(folder / "runs" / f"{run.name}-evaluate-0123" / "gmm.npz", gmm)
    elif where == "work":
        save_gmm(folder / "gmm" / "ds-1" / f"s{SIZE}" / f"soft-k{K}-sig.npz", gmm)
    return run


def test_model_finds_its_gmm_and_mean_lightness(tmp_path):
    for where in ("run", "evaluate", "work"):
        run = _fake_run(tmp_path / where, where=where)
        cm = load_colour_model(run, "cpu")
        assert cm.im_size == SIZE and cm.mean_L == 50.0 and cm.gmm["means"].shape == (K, 2)
        assert str(cm.device) == "cpu"
    run = _fake_run(tmp_path / "none", where="nowhere")
    with pytest.raises(ModelError, match="--gmm"):
        load_colour_model(run / "best.pt", "cpu")
    save_gmm(tmp_path / "explicit.npz", _gmm())
    assert load_colour_model(run / "best.pt", "cpu", gmm_path=tmp_path / "explicit.npz", mean_L=40).mean_L == 40
    with pytest.raises(ModelError, match="K=9"):
        load_colour_model(run, "cpu", gmm_path=_save(tmp_path / "k9.npz", uniform_grid(9)))
    with pytest.raises(ModelError, match="no checkpoint"):
        load_colour_model(tmp_path, "cpu")


def _save(path, gmm):
    save_gmm(path, gmm)
    return path


def test_merge_keeps_full_resolution_lightness():
    rng = np.random.default_rng(1)
    L = rng.uniform(20, 80, (37, 53)).astype(np.float32)
    ab = np.zeros((2, SIZE, SIZE), np.float32)
    ab[0], ab[1] = 10.0, -8.0
    rgb = merge_lightness(L, ab)
    assert rgb.shape == (37, 53, 3) and rgb.dtype == np.uint8
    lab = rgb_to_lab(rgb)
    assert np.abs(lab[..., 0] - L).max() < 0.6                       # uint8 rounding only
    np.testing.assert_allclose(lab[..., 1].mean(), 10, atol=0.5)


def test_collect_inputs_files_folders_globs_and_clashes(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.jpg", "a/sub/y.png", "a/.hidden.png", "a/notes.txt", "b.png", "c/x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "out"
    items, errors = collect_inputs([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "c" / "x.png",
                                    str(tmp_path / "nothing*.jpg"), tmp_path / "missing.png"], out)
    dst = {Path(s).relative_to(tmp_path).as_posix(): d.relative_to(out).as_posix() for s, d in items}
    assert dst == {"a/x.jpg": "x.png", "a/sub/y.png": "sub/y.png", "b.png": "b.png",
                   "c/x.png": "x-2.png", "missing.png": "missing.png"}
    assert [e[0] for e in errors] == [str(tmp_path / "nothing*.jpg")]


# ----------------------------------------------------------------------------- the command
def _write_inputs(folder):
    """A colour photo (odd size), a grayscale one (mode L), a broken file, a non-image."""
    import skimage.data
    folder.mkdir(parents=True)
    Image.fromarray(skimage.data.chelsea()).resize((83, 55), Image.BICUBIC).save(folder / "cat.jpg", quality=95)
    Image.fromarray(skimage.data.camera()).resize((40, 66), Image.BICUBIC).save(folder / "gray.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "readme.txt").write_text("not an image")


def _lightness(path):
    return rgb_to_lab(np.asarray(Image.open(path).convert("RGB")))[..., 0]


def test_command_colorizes_a_folder_reports_the_broken_file_and_exits_1(tmp_path):
    run = _fake_run(tmp_path)
    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "colorize", "--model", str(run),
                           str(tmp_path / "in"), "--out", str(out), "--batch-size", "2", "--decoder", "mean"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.jpg" in errors[0], proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "gray.png"]
    for name, src in (("cat.png", "cat.jpg"), ("gray.png", "gray.png")):
        got, want = Image.open(out / name), Image.open(tmp_path / "in" / src)
        assert got.size == want.size and got.mode == "RGB"
        diff = np.abs(_lightness(out / name) - _lightness(tmp_path / "in" / src))
        assert diff.mean() < 0.5 and np.percentile(diff, 99) < 2.0, (name, diff.mean(), diff.max())


def test_command_in_process_exit_codes(tmp_path, capsys):
    run = _fake_run(tmp_path)
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.jpg").unlink()
    out = tmp_path / "out"
    assert main(["colorize", "--model", str(run / "best.pt"), str(tmp_path / "in" / "*.jpg"),
                 str(tmp_path / "in" / "gray.png"), "--out", str(out), "--decoder", "annealed",
                 "--temperature", "0.2", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "gray.png"]
    assert main(["colorize", "--model", str(tmp_path / "nope"), str(tmp_path / "in"), "--out", str(out)]) == 2
    assert "cannot load model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["colorize", "--model", str(run), "x.png", "--out", str(out), "--temperature", "0"])
    assert e.value.code == 2
