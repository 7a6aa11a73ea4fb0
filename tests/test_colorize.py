"""Decoders, self-contained checkpoints, the float32 merge and the `colorize-fcn` command
(CPU, fast: an untrained tiny model)."""
import os
import subprocess
import sys
import time
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
from pipeline.color import (ab_to_hue_chroma, hue_chroma_to_ab, lab_planes_to_rgb, lab_to_rgb, lightness_plane,
                            rgb_to_lab)
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


def test_float32_lab_to_rgb_is_within_one_level_of_float64():
    rng = np.random.default_rng(5)
    n = 300_000
    L = np.concatenate([rng.uniform(-2, 102, n), np.linspace(0, 100, n)]).astype(np.float32)
    ab = np.concatenate([rng.uniform(-130, 130, (2, n)), np.zeros((2, n))], axis=1).astype(np.float32)
    fast = lab_planes_to_rgb(L.reshape(600, -1), ab.reshape(2, 600, -1))            # any shape
    assert fast.shape == (600, 2 * n // 600, 3) and fast.dtype == np.uint8
    exact = lab_to_rgb(np.stack([L, ab[0], ab[1]], axis=-1)).reshape(fast.shape)
    diff = np.abs(fast.astype(int) - exact)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4, (diff.max(), (diff > 0).mean())
    assert len(np.unique(exact)) == 256                                 # every code was exercised
    with pytest.raises(ValueError, match="does not match"):
        lab_planes_to_rgb(L, ab[:, :10])


def test_lightness_plane_is_rgb_to_labs_lightness():
    rgb = np.random.default_rng(6).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    np.testing.assert_allclose(lightness_plane(rgb), rgb_to_lab(rgb)[..., 0], atol=1e-4)
    with pytest.raises(TypeError):
        lightness_plane(rgb.astype(np.float32))


def test_collect_inputs_files_folders_globs_and_clashes(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.jpg", "a/sub/y.png", "a/.hidden.png", "a/notes.txt", "b.png", "c/x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    out = tmp_path / "out"
    items, errors, refused = collect_inputs([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "c" / "x.png",
                                             str(tmp_path / "nothing*.jpg"), tmp_path / "missing.png"], out)
    dst = {Path(s).relative_to(tmp_path).as_posix(): d.relative_to(out).as_posix() for s, d in items}
    assert dst == {"a/x.jpg": "x.png", "a/sub/y.png": "sub/y.png", "b.png": "b.png", "c/x.png": "x-2.png"}
    assert errors == [] and refused == [(str(tmp_path / "nothing*.jpg"), "no file matches this pattern"),
                                        (str(tmp_path / "missing.png"), "no such file or folder")]
    items, errors, _ = collect_inputs([tmp_path / "c"], out, ".jpg")
    assert [d.relative_to(out).as_posix() for _, d in items] == ["x.jpg"]
    # three inputs named x.png and one literally named x-2.png: four distinct outputs
    for name in ("d/x.png", "e/x.png", "f/x-2.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    for order in (["c/x.png", "d/x.png", "e/x.png", "f/x-2.png"], ["f/x-2.png", "c/x.png", "d/x.png", "e/x.png"]):
        items, errors, _ = collect_inputs([tmp_path / name for name in order], out)
        dst = {Path(s).relative_to(tmp_path).as_posix(): d.relative_to(out).as_posix() for s, d in items}
        assert errors == [] and len(set(dst.values())) == 4
        assert dst == ({"c/x.png": "x.png", "d/x.png": "x-2.png", "e/x.png": "x-3.png", "f/x-2.png": "x-2-2.png"}
                       if order[0] == "c/x.png" else
                       {"f/x-2.png": "x-2.png", "c/x.png": "x.png", "d/x.png": "x-3.png", "e/x.png": "x-4.png"})
    items, errors, _ = collect_inputs([tmp_path / "b.png"], tmp_path)    # would write over its input
    assert items == [] and len(errors) == 1 and "would replace it" in errors[0][1]


def _pipeline_folders(root):
    """Two run folders (one with an evaluation folder inside), an old-style run (best.pt +
    log.csv), and photos next to a lone checkpoint (not a run folder)."""
    runs = root / "work" / "runs"
    r1, r2, old = runs / "fcn16s-c101-aaa", runs / "fcn16s-c101-bbb", runs / "fcn32s-c101-old"
    ev = r1 / "eval-123"
    for folder, files in ((r1, ["inputs.json", "best.pt", "tile-000050.png"]), (r2, ["done.json", "loss.png"]),
                          (old, ["best.pt", "log.csv", "tile.png"]), (ev, ["metrics.json", "report.html"]),
                          (ev / "gallery", ["best-0.png"]), (root / "mine", ["best.pt", "photo.png"])):
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            (folder / name).write_bytes(b"x")
    return r1, r2, old, ev


def test_collect_inputs_refuses_run_and_evaluation_folders(tmp_path):
    r1, r2, old, ev = _pipeline_folders(tmp_path)
    out = tmp_path / "out"
    for inputs, refused in (([r2], [r2]), ([old], [old]), ([tmp_path / "work"], [r1, r2, old]),
                            ([str(r1.parent / "*")], [r1, r2, old]), ([ev / "gallery" / "best-0.png"], [r1]),
                            ([str(ev / "*")], [r1])):
        items, errors, got = collect_inputs(inputs, out)
        assert items == [] and [Path(f) for f, _ in got] == [p.resolve() for p in refused], (inputs, got)
        assert all("training run folder" in msg for _, msg in got), got
    tmp_ev = tmp_path / "loose-eval"                 # an evaluation folder outside any run
    tmp_ev.mkdir()
    for name in ("metrics.json", "report.html", "auc.png"):
        (tmp_ev / name).write_bytes(b"x")
    _, _, got = collect_inputs([tmp_ev / "auc.png"], out)
    assert len(got) == 1 and "evaluation folder" in got[0][1]
    items, errors, got = collect_inputs([tmp_path / "mine"], out)   # best.pt alone: photos kept beside it
    assert [s.name for s, _ in items] == ["photo.png"] and got == [] and errors == []


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
    assert len(warnings) == 1 and "may not have finished" in warnings[0] and "30 of 100" in warnings[0], warnings
    assert main(["colorize", "--model", str(tmp_path / "nope"), str(tmp_path / "in"), "--out", str(out),
                 "--overwrite"]) == 2
    assert "cannot load model" in capsys.readouterr().err
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run / "best.pt").read_bytes()[:1000])
    assert main(["colorize", "--model", str(truncated), str(tmp_path / "in"), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load model" in err and "truncated.pt" in err, err
    with pytest.raises(SystemExit) as e:
        main(["colorize", "--model", str(run), "x.png", "--out", str(out), "--temperature", "0"])
    assert e.value.code == 2


# ----------------------------------------------------------------------------- options of the command
def _cli(*args, timeout=120):
    """`python -m inference ARGS` in a fresh process (as `colorize-fcn ARGS`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "inference", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def _colorize(run, *args):
    return _cli("colorize", "--model", run, "--device", "cpu", "--decoder", "mean", "-q", *args)


def _colorize_here(capsys, run, *args):
    """The same in this process (no torch import to wait for): (exit status, stderr)."""
    capsys.readouterr()
    try:
        code = main(["colorize", "--model", str(run), "--device", "cpu", "--decoder", "mean", "-q", *map(str, args)])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _errors(proc):
    return [line for line in proc.stderr.splitlines() if ": error: " in line]


def _photo(h=48, w=64):
    import skimage.data
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.BICUBIC))


def _photo_folder(folder, names) -> Path:
    """`folder` holding one _photo() PNG per name (<name>.png)."""
    folder.mkdir()
    for name in names:
        Image.fromarray(_photo()).save(folder / f"{name}.png")
    return folder


def test_jpg_format_and_quality(tmp_path, capsys):
    run = fake_run(tmp_path)
    Image.fromarray(_photo(120, 160)).save(tmp_path / "a.png")
    proc = _colorize(run, tmp_path / "a.png", "--out", tmp_path / "q30", "--format", "jpg", "--quality", 30)
    assert proc.returncode == 0, proc.stderr
    assert _colorize_here(capsys, run, tmp_path / "a.png", "--out", tmp_path / "q95", "--format", "jpg",
                          "--quality", 95)[0] == 0
    sizes = {}
    for q in (30, 95):
        out = tmp_path / f"q{q}" / "a.jpg"
        assert [p.name for p in out.parent.iterdir()] == ["a.jpg"]
        with Image.open(out) as im:
            assert im.format == "JPEG" and im.size == (160, 120) and im.mode == "RGB"
        sizes[q] = out.stat().st_size
    assert sizes[30] < 0.7 * sizes[95], sizes
    code, err = _colorize_here(capsys, run, tmp_path / "a.png", "--out", tmp_path / "png", "--quality", 80)
    assert code == 2 and "--format jpg only" in err and not (tmp_path / "png").exists()    # png has no quality
    code, err = _colorize_here(capsys, run, tmp_path / "a.png", "--out", tmp_path / "png", "--format", "jpg",
                               "--quality", 101)
    assert code == 2 and "1..100" in err


def test_alpha_is_kept_on_png_and_composited_for_jpg(tmp_path):
    run = fake_run(tmp_path)
    rgb = _photo()
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    alpha[:5] = 255
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    gray = rgb_to_lab(rgb)[..., 0].round().astype(np.uint8)
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    Image.fromarray(rgb).save(tmp_path / "opaque.png")
    proc = _colorize(run, tmp_path / "rgba.png", tmp_path / "la.png", tmp_path / "opaque.png", "--out", tmp_path / "o")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    for name, straight in (("rgba", rgb), ("la", np.repeat(gray[..., None], 3, axis=-1))):
        with Image.open(tmp_path / "o" / f"{name}.png") as im:
            assert im.mode == "RGBA" and im.size == (64, 48)
            out = np.asarray(im)
        np.testing.assert_array_equal(out[..., 3], alpha)
        # the lightness of the input's own colours, not of them composited on white (lighter
        # where transparent): the output over any background looks like the input
        assert_keeps_lightness(out[..., :3], rgb_to_lab(straight)[..., 0])
    with Image.open(tmp_path / "o" / "opaque.png") as im:
        assert im.mode == "RGB"
    proc = _colorize(run, tmp_path / "rgba.png", tmp_path / "opaque.png", "--out", tmp_path / "j", "--format", "jpg")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "1 input(s) had an alpha channel" in warnings[0], proc.stderr
    with Image.open(tmp_path / "j" / "rgba.jpg") as im:
        assert im.mode == "RGB"


def test_existing_outputs_are_refused_skipped_or_overwritten(tmp_path, capsys):
    run = fake_run(tmp_path)
    src = _photo_folder(tmp_path / "in", ("a", "b"))
    out = tmp_path / "out"
    assert _colorize_here(capsys, run, src, "--out", out)[0] == 0
    made = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"mine")                     # the user's edit of an output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _colorize(run, src, "--out", out)                 # refused before any work
    assert proc.returncode == 2, proc.stderr
    errors = _errors(proc)
    assert len(errors) == 2 and all("exists" in e and "--overwrite" in e for e in errors), proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    Image.fromarray(_photo()).save(src / "c.png")
    code, err = _colorize_here(capsys, run, src, "--out", out, "--skip-existing")   # "mine" records no input
    assert code == 2 and err.count("error") == 1 and "a.png exists but records no input" in err, err
    (out / "a.png").write_bytes(made)
    code, err = _colorize_here(capsys, run, src, "--out", out, "--skip-existing")
    assert code == 0 and "error" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert (out / "a.png").read_bytes() == made and (out / "b.png").read_bytes() == before["b.png"]
    code, err = _colorize_here(capsys, tmp_path / "no-model", src, "--out", out, "--skip-existing")
    assert code == 0 and err == "", err                      # all done: no model to load (or fail on)
    assert _colorize_here(capsys, run, src, "--out", out, "--overwrite")[0] == 0
    with Image.open(out / "a.png") as im:                    # replaced by a colorized image again
        assert im.size == (64, 48)
    code, err = _colorize_here(capsys, run, src, "--out", out, "--overwrite", "--skip-existing")
    assert code == 2 and "not allowed with" in err


def test_run_and_evaluation_folders_are_refused(tmp_path):
    r1, r2, _, ev = _pipeline_folders(tmp_path)
    fake_run(tmp_path, name=r1.name)                         # a real best.pt in r1
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_photo()).save(photos / "p.png")
    # what the shell makes of --model work/runs/fcn16s-c101-*, plus a report image
    proc = _colorize(r1, r2, ev / "gallery" / "best-0.png", photos, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    errors = _errors(proc)
    assert len(errors) == 2 and str(r2.resolve()) in errors[0] and str(r1.resolve()) in errors[1], errors
    assert all("not an input" in e for e in errors) and not (tmp_path / "out").exists()


def test_size_sets_the_network_input(tmp_path, monkeypatch):
    from inference.api import ImageColorizer
    run = fake_run(tmp_path)
    Image.fromarray(_photo(50, 70)).save(tmp_path / "a.png")
    seen = []
    predict = ImageColorizer.predict_ab

    def spy(self, L_small, *args):
        seen.append([x.shape for x in L_small])
        return predict(self, L_small, *args)
    monkeypatch.setattr(ImageColorizer, "predict_ab", spy)
    for size, out in ((None, "default"), (48, "s48")):
        argv = ["colorize", "--model", str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / out),
                "--device", "cpu", "-q"] + (["--size", str(size)] if size else [])
        assert main(argv) == 0
        with Image.open(tmp_path / out / "a.png") as im:
            assert im.size == (70, 50)
    assert seen == [[(SIZE, SIZE)], [(48, 48)]]
    a, b = (np.asarray(Image.open(tmp_path / o / "a.png")) for o in ("default", "s48"))
    assert not np.array_equal(a, b)
    with pytest.raises(SystemExit) as e:
        main(["colorize", "--model", str(run), "x.png", "--out", "o", "--size", "8"])
    assert e.value.code == 2


def test_version_comes_from_the_package_metadata(monkeypatch):
    import importlib.metadata
    import inference
    proc = _cli("--version", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"colorize-fcn {importlib.metadata.version('colorize-fcn')}\n"
    assert proc.stdout.split()[1] == inference.__version__

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert inference._installed_version() == "0+unknown"


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from inference.cli import build_parser; "
            "build_parser().parse_args(['colorize', '--model', 'm', 'x.png', '--out', 'o']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    times = []
    for _ in range(3):                                       # best of 3: the machine is shared
        t = time.perf_counter()
        proc = _cli("colorize", "--help", timeout=60)
        times.append(time.perf_counter() - t)
        assert proc.returncode == 0 and "--skip-existing" in proc.stdout
    assert min(times) < 1.5, times                            # ~0.2 s when quiet; torch alone takes > 1 s
