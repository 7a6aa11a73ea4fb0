"""Decoders, self-contained checkpoints and the `colorize-fcn colorize` command
(CPU, fast: an untrained tiny model)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.api import ModelError, load_colorizer
from inference.cli import main
from inference.files import collect_inputs
from inference.images import merge_lightness
from models.colorizer import Colorizer
from models.decoders import cluster_centres_ab, decode
from pipeline.color import ab_to_hue_chroma, hue_chroma_to_ab, rgb_to_lab
from train.checkpoint import save_checkpoint

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
def fake_colorizer(gmm=None, mean_L=50.0) -> Colorizer:
    """An untrained tiny Colorizer whose colours depend on its input: untrained, its posteriors
    are nearly uniform and nearly constant, so BatchNorm statistics are set from one seeded
    batch and the score layer is scaled up (posteriors up to ~0.9)."""
    torch.manual_seed(0)
    colorizer = Colorizer("fcn32s", K, 1 / 16, SIZE, mean_L, _gmm() if gmm is None else gmm)
    batch = np.random.default_rng(0).uniform(0, 100, (8, 1, SIZE, SIZE)).astype(np.float32)
    for m in colorizer.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None                                # running stats = this batch's
    with torch.no_grad():
        colorizer.train()(torch.from_numpy(batch))
        colorizer.net.score_fr.weight.mul_(10)
    return colorizer.eval()


def save_run(run, colorizer, iteration=1, max_iteration=1) -> Path:
    """<run>/best.pt as train.fit writes it: the Colorizer's settings + weights."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run / "best.pt", {"settings": colorizer.settings(), "state_dict": colorizer.state_dict(),
                                      "iteration": iteration, "max_iteration": max_iteration,
                                      "cfg": {"im_size": colorizer.im_size, "n_clusters": colorizer.n_classes}})
    return run


def fake_run(folder, gmm=None, mean_L=50.0, iteration=1, max_iteration=1, name="fcn32s-c102-abc") -> Path:
    """A run folder holding only best.pt, of fake_colorizer().  test_api and test_evaluate use it too."""
    return save_run(Path(folder) / "runs" / name, fake_colorizer(gmm, mean_L), iteration, max_iteration)


def _one_line_model_error(path, *match):
    with pytest.raises(ModelError) as e:
        load_colorizer(path, "cpu")
    msg = str(e.value)
    assert msg and "\n" not in msg and len(msg) <= 400, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_checkpoint_alone_is_self_contained(tmp_path):
    gmm = _gmm(hues=(0.1, 0.35, 0.55, 0.8), chroma=0.3)
    run = fake_run(tmp_path, gmm=gmm, mean_L=42.5)
    alone = tmp_path / "elsewhere" / "model.pt"                  # no run folder, config or GMM file
    alone.parent.mkdir()
    alone.write_bytes((run / "best.pt").read_bytes())
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    from_run = load_colorizer(run, "cpu")
    from_copy = load_colorizer(alone, "cpu")
    c = from_copy.colorizer
    assert (c.arch, c.n_classes, c.im_size, float(c.mean_L)) == ("fcn32s", K, SIZE, 42.5)
    np.testing.assert_allclose(c.gmm["means"], gmm["means"])
    assert str(from_copy.device) == "cpu" and from_copy.im_size == SIZE
    np.testing.assert_array_equal(np.asarray(from_copy.colorize(image, "mean")),
                                  np.asarray(from_run.colorize(image, "mean")))
    # the mean lightness comes from the checkpoint's settings: the same weights with another
    # mean_L colour differently
    ckpt = torch.load(alone, weights_only=True)
    save_checkpoint(alone, {**ckpt, "settings": {**ckpt["settings"], "mean_L": 80.0}})
    shifted = load_colorizer(alone, "cpu")
    assert float(shifted.colorizer.mean_L) == 80.0
    a, b = np.asarray(shifted.colorize(image, "mean")), np.asarray(from_run.colorize(image, "mean"))
    assert np.abs(a.astype(int) - b).max() > 5


def test_unloadable_checkpoints_are_one_line_model_errors(tmp_path):
    run = fake_run(tmp_path)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    _one_line_model_error(tmp_path, "no checkpoint")                      # a folder without best.pt
    _one_line_model_error(tmp_path / "missing.pt", "no checkpoint")
    old = tmp_path / "old.pt"                                              # the old format: no settings
    save_checkpoint(old, {"model": ckpt["state_dict"], "arch": "fcn32s", "iteration": 1})
    _one_line_model_error(old, "old.pt", "not a colorize-fcn checkpoint")
    truncated = tmp_path / "truncated.pt"
    data = (run / "best.pt").read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    _one_line_model_error(truncated, "truncated.pt")
    k9 = tmp_path / "k9.pt"                                               # settings that disagree
    save_checkpoint(k9, {**ckpt, "settings": {**ckpt["settings"], "n_classes": 9}})
    _one_line_model_error(k9, "K=4")
    wrong = tmp_path / "wrong.pt"                                         # weights of another shape
    save_checkpoint(wrong, {**ckpt, "settings": {**ckpt["settings"], "width": 1 / 8}})
    _one_line_model_error(wrong, "wrong.pt")


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


def assert_keeps_lightness(rgb_out, L_in, tol=1.0):
    """The output's Lab lightness is the input's within `tol` L units (uint8 rounding) at every
    pixel whose colour is in gamut (no channel clipped to 0 or 255: clipping a colour that is
    out of the sRGB gamut moves its lightness), which must be most of them."""
    rgb_out = np.asarray(rgb_out)
    diff = np.abs(rgb_to_lab(rgb_out)[..., 0] - L_in)
    in_gamut = ((rgb_out > 0) & (rgb_out < 255)).all(axis=-1)
    assert in_gamut.mean() > 0.5 and diff[in_gamut].max() < tol, (in_gamut.mean(), diff[in_gamut].max())
    assert np.median(diff) < 0.5, np.median(diff)


def test_command_colorizes_a_folder_reports_the_broken_file_and_exits_1(tmp_path):
    run = fake_run(tmp_path)
    _write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "inference", "colorize", "--model", str(run),
                           str(tmp_path / "in"), "--out", str(out), "--batch-size", "2", "--decoder", "mean",
                           "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.jpg" in errors[0], proc.stderr
    assert "warning" not in proc.stderr, proc.stderr                 # a finished run
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "gray.png"]
    for name, src in (("cat.png", "cat.jpg"), ("gray.png", "gray.png")):
        got, want = Image.open(out / name), Image.open(tmp_path / "in" / src)
        assert got.size == want.size and got.mode == "RGB"
        assert_keeps_lightness(got.convert("RGB"), _lightness(tmp_path / "in" / src))


def test_command_in_process_exit_codes_and_unfinished_warning(tmp_path, capsys):
    run = fake_run(tmp_path, iteration=30, max_iteration=100)
    _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "broken.jpg").unlink()
    out = tmp_path / "out"
    assert main(["colorize", "--model", str(run / "best.pt"), str(tmp_path / "in" / "*.jpg"),
                 str(tmp_path / "in" / "gray.png"), "--out", str(out), "--decoder", "annealed",
                 "--temperature", "0.2", "--device", "cpu", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "gray.png"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "unfinished" in warnings[0] and "30 of 100" in warnings[0], warnings
    assert main(["colorize", "--model", str(tmp_path / "nope"), str(tmp_path / "in"), "--out", str(out)]) == 2
    assert "cannot load model" in capsys.readouterr().err
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "best.pt").read_bytes()[:1000])
    assert main(["colorize", "--model", str(truncated), str(tmp_path / "in"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load model" in err and "truncated.pt" in err, err
    with pytest.raises(SystemExit) as e:
        main(["colorize", "--model", str(run), "x.png", "--out", str(out), "--temperature", "0"])
    assert e.value.code == 2
