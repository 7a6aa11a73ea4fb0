"""Metrics on known inputs, class rebalancing, and the Evaluate / ClassPrior tasks."""
import json
import math
from pathlib import Path

import luigi
import numpy as np
import pytest
import torch

import tasks
from conftest import build, write_photo
from inference.api import load_colorizer
from inference.evaluate import evaluate_images, gray_label
from inference.metrics import (AUC_MAX, accuracy_curve, auc_percent, dumps, error_histogram, ab_error,
                               mean_psnr, psnr, raw_accuracy_auc)
from models.decoders import upsample_posteriors
from pipeline.color import lab_to_rgb, rgb_to_lab
from pipeline.config import ConfigError
from pipeline.labels import target_posteriors
from pipeline.prior import cluster_prior, rebalance_weights
from pipeline.run_inputs import RunInputs
from pipeline.shards import ShardError, write_shard
from test_colorize import K, _gmm, fake_colorizer
from train.data import ShardDataset

CFG = 102


# ----------------------------------------------------------------------------- metrics
def test_identical_images_auc_100_and_infinite_psnr_handled():
    rng = np.random.default_rng(0)
    ab = rng.uniform(-60, 60, (2, 16, 16))
    assert raw_accuracy_auc(ab, ab) == pytest.approx(100.0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(rgb, rgb) == math.inf
    summary = mean_psnr([psnr(rgb, rgb), 30.0])
    assert summary == {"psnr": pytest.approx((100.0 + 30.0) / 2), "psnr_identical": 1}
    text = dumps({"psnr": math.inf, "values": [1.0, math.inf, math.nan]})  # strict JSON
    assert json.loads(text) == {"psnr": "inf", "values": [1.0, "inf", "nan"]}


def test_psnr_known_value():
    a = np.full((4, 5, 3), 100, np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255))      # MSE 1
    assert psnr(a, a + 10) == pytest.approx(20 * math.log10(255 / 10))


@pytest.mark.parametrize("d", [0.4, 7.3, 37.5, 149.2, 151.0, 400.0])
def test_constant_ab_offset_gives_the_auc_the_definition_predicts(d):
    rng = np.random.default_rng(1)
    ab = rng.uniform(-80, 80, (2, 12, 9))
    angle = rng.uniform(0, 2 * np.pi, (12, 9))                  # any direction, same distance d
    moved = ab + d * np.stack([np.cos(angle), np.sin(angle)])
    # every pixel has error d: the fraction within t is 0 for t < d and 1 for t >= d, t = 0..150;
    # trapezoid area over [0, 150] = (150 - ceil(d)) full unit intervals + the half interval
    # (ceil(d) - 1, ceil(d)); divided by 150
    c = math.ceil(d)
    expected = 0.0 if d > AUC_MAX else 100 * (AUC_MAX - c + 0.5) / AUC_MAX
    assert raw_accuracy_auc(moved, ab) == pytest.approx(expected, abs=1e-9)


def _auc_of_constant_error(d):
    return 100 * (AUC_MAX - math.ceil(d) + 0.5) / AUC_MAX


def test_auc_pools_pixels_over_images():
    ab = np.zeros((2, 10, 10))
    near = ab + np.array([3.5, 0])[:, None, None]              # 100 pixels of error 3.5
    far = np.zeros((2, 30, 10)) + np.array([0, 60.5])[:, None, None]   # 300 pixels of error 60.5
    hist = error_histogram(ab_error(near, ab)) + error_histogram(ab_error(far, np.zeros((2, 30, 10))))
    curve = accuracy_curve(hist)
    assert curve[3] == 0 and curve[4] == pytest.approx(0.25) and curve[61] == 1.0
    pooled = 0.25 * _auc_of_constant_error(3.5) + 0.75 * _auc_of_constant_error(60.5)
    assert auc_percent(curve) == pytest.approx(pooled)
    # the per-image average weighs both images alike: a different number
    per_image = (raw_accuracy_auc(near, ab) + raw_accuracy_auc(far, np.zeros((2, 30, 10)))) / 2
    assert per_image == pytest.approx(0.5 * _auc_of_constant_error(3.5) + 0.5 * _auc_of_constant_error(60.5))
    assert per_image - auc_percent(curve) > 5


# ----------------------------------------------------------------------------- evaluate_images
class _Images:
    """What evaluate_images reads: len() and get_visual(i) -> {L, ab, posteriors, path}."""

    def __init__(self, visuals):
        self.visuals = visuals

    def __len__(self):
        return len(self.visuals)

    def get_visual(self, i):
        return self.visuals[i]


def _visual(L, ab, name, target_size=8):
    post = np.random.default_rng(len(name)).dirichlet(np.ones(K), (target_size, target_size))
    return {"L": np.asarray(L, np.float32), "ab": np.asarray(ab, np.float32),
            "posteriors": post.transpose(2, 0, 1).astype(np.float32), "path": name}


def _known_photo(size, seed=0):
    import skimage.data
    from PIL import Image
    photo = [skimage.data.chelsea(), skimage.data.coffee()][seed]
    lab = rgb_to_lab(np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC)))
    return lab[..., 0], np.moveaxis(lab[..., 1:], -1, 0)


def _lab_rgb(L, a, b):
    return lab_to_rgb(np.stack(np.broadcast_arrays(L, a, b), axis=-1))


def test_reported_psnr_is_psnr_of_the_lab_to_rgb_images():
    images = [_visual(*_known_photo(32, seed), f"photo{seed}") for seed in (0, 1)]
    metrics = evaluate_images(fake_colorizer(), _Images(images), batch_size=2)
    want = []
    for v, row in zip(images, metrics["per_image"]):
        L, (a, b) = v["L"], v["ab"]
        want.append(psnr(_lab_rgb(L, 0, 0), _lab_rgb(L, a, b)))        # gray vs the truth
        assert row["psnr"]["gray"] == pytest.approx(want[-1], abs=1e-9)
        assert row["auc"]["gray"] == pytest.approx(raw_accuracy_auc(np.zeros_like(v["ab"]), v["ab"]))
    assert 10 < min(want) and max(want) < 60                           # a real, finite PSNR
    assert metrics["methods"]["gray"]["psnr"] == pytest.approx(np.mean(want), abs=1e-9)
    assert metrics["methods"]["gray"]["psnr_identical"] == 0


def test_evaluate_pools_pixels_over_images_of_different_sizes():
    L = 50.0
    small = _visual(np.full((32, 32), L), np.zeros((2, 32, 32)) + np.array([3.5, 0])[:, None, None], "small")
    large = _visual(np.full((64, 64), L), np.zeros((2, 64, 64)) + np.array([0, 60.5])[:, None, None], "large")
    metrics = evaluate_images(fake_colorizer(), _Images([small, large]), batch_size=1)
    gray = metrics["methods"]["gray"]
    pooled = 0.2 * _auc_of_constant_error(3.5) + 0.8 * _auc_of_constant_error(60.5)   # 1024 vs 4096 pixels
    assert gray["auc"] == pytest.approx(pooled)
    per_image = [row["auc"]["gray"] for row in metrics["per_image"]]
    assert per_image == pytest.approx([_auc_of_constant_error(3.5), _auc_of_constant_error(60.5)])
    assert np.mean(per_image) - gray["auc"] > 10                      # not the per-image average


def test_gray_label_is_the_label_stages_cluster_of_a_gray_image():
    for nearest in (2, 3):
        gmm = _gmm()
        gmm["means"][:] = [[0.4, 0.3], [0.6, 0.3], [0.2, 0.4], [0.8, 0.5]]
        gmm["means"][nearest] = [0.05, 0.05]            # (hue, chroma) nearest a gray pixel's (0, 0)
        labels = target_posteriors(np.zeros((2, 4, 4), np.float32), gmm, 1).argmax(0)
        assert gray_label(gmm) == nearest and (labels == nearest).all()


# ----------------------------------------------------------------------------- rebalancing
def test_rebalance_weights_formula_and_normalisation():
    p = np.array([0.7, 0.2, 0.1, 0.0])
    w = rebalance_weights(p, 0.5)
    raw = 1 / (0.5 * p + 0.5 / 4)
    np.testing.assert_allclose(w / w[0], raw / raw[0])          # w ~ 1 / ((1 - l) p + l / K)
    assert (p * w).sum() == pytest.approx(1.0)                  # expectation under p is 1
    assert w[3] > w[2] > w[1] > w[0]                            # rare clusters weigh more
    np.testing.assert_allclose(rebalance_weights(p, 1.0), np.ones(4))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="lambda"):
            rebalance_weights(p, bad)


def test_cluster_prior_counts_argmax_labels(tmp_path):
    post = np.zeros((3, 3, 2, 2), np.float16)                   # 3 images, K = 3, 2x2 targets
    post[:, 0] = 0.6
    post[:, 1] = 0.4
    post[0, :, 0, 0] = [0.1, 0.1, 0.8]                          # one pixel of cluster 2
    post[1, :, 1, 1] = [0.2, 0.7, 0.1]                          # one of cluster 1
    write_shard(tmp_path / "a.h5", {"posteriors": post[:2]}, {"n_images": 2})
    write_shard(tmp_path / "b.h5", {"posteriors": post[2:]}, {"n_images": 1})
    prior = cluster_prior([tmp_path / "a.h5", tmp_path / "b.h5"], 3)
    assert prior["counts"] == [10, 1, 1] and prior["n_pixels"] == 12 and prior["n_images"] == 3
    np.testing.assert_allclose(prior["prior"], [10 / 12, 1 / 12, 1 / 12])


def test_rebalancing_runs_class_prior_once_and_passes_weights(work, photo_dataset, ran, monkeypatch):
    import train.fit
    seen = []

    def fake_fit(run_dir, inputs, **kwargs):                    # the weights are what matters here
        seen.append(inputs.class_weights)
        for name in ("best.pt", "done.json"):                   # the training task's outputs
            (Path(run_dir) / name).write_text("{}")
        return {}
    monkeypatch.setattr(train.fit, "fit", fake_fit)
    over = {"rebalance": 0.5}
    build(tasks.TrainFCN32s(config=CFG, overrides=over, dataset=str(photo_dataset)))
    assert ran.count("ClassPrior") == 1
    prep = tasks.PrepareRun(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s")
    prior = json.loads(Path(prep.requires()["prior"].output().path).read_text())["prior"]
    assert len(prior) == 4 and sum(prior) == pytest.approx(1.0)
    np.testing.assert_allclose(seen[-1], rebalance_weights(prior, 0.5))
    assert np.dot(prior, seen[-1]) == pytest.approx(1.0)
    ran.clear()                                                 # another lambda: same prior, new run
    build(tasks.TrainFCN32s(config=CFG, overrides={"rebalance": 0.2}, dataset=str(photo_dataset)))
    assert sorted(ran.families()) == ["PrepareRun", "TrainFCN32s"]
    np.testing.assert_allclose(seen[-1], rebalance_weights(prior, 0.2))
    ran.clear()                                                 # off: no prior, no weights
    build(tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset)))
    assert sorted(ran.families()) == ["PrepareRun", "TrainFCN32s"] and seen[-1] is None
    assert "prior" not in tasks.PrepareRun(config=CFG, dataset=str(photo_dataset), arch="fcn32s").requires()


# ----------------------------------------------------------------------------- Evaluate
def _independent_scores(run_dir):
    """Pixel accuracy of the gray baseline and of the model's argmax, and the gray PSNR, computed
    here from the run's val shards and best.pt (not through inference.evaluate's bookkeeping)."""
    colorizer = load_colorizer(run_dir, "cpu").colorizer
    data = ShardDataset(RunInputs.load(run_dir).val, flip=False)
    gray_hits = model_hits = pixels = 0
    gray_psnr = []
    try:
        for i in range(len(data)):
            v = data.get_visual(i)
            size = v["L"].shape[-1]
            target = upsample_posteriors(torch.from_numpy(v["posteriors"])[None], (size, size)).argmax(1)[0]
            predicted = colorizer.posteriors(v["L"][None]).argmax(1)[0].cpu()
            gray_hits += int((target == gray_label(colorizer.gmm)).sum())
            model_hits += int((predicted == target).sum())
            pixels += target.numel()
            gray_psnr.append(psnr(_lab_rgb(v["L"], 0, 0), _lab_rgb(v["L"], *v["ab"])))
    finally:
        data.close()
    return {"gray_acc": gray_hits / pixels, "model_acc": model_hits / pixels, "gray_psnr": np.mean(gray_psnr)}


def test_overfit_run_beats_gray_and_evaluate_is_stale_only(work, photo_dataset, ran):
    """Config 102 over-fitted on the train photos, evaluated on the same photos."""
    over = {"val_split": "train", "max_iteration": 30, "interval_validate": 30, "batch_size": 2}
    ev = tasks.Evaluate(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", gallery=2)
    build(ev)
    assert ran.count("Evaluate") == 1 and ran.count("TrainFCN32s") == 1
    out, run_dir = ev.out_dir(), ev.requires()["run"].run_dir()
    assert out.parent == run_dir and out.name.startswith("eval-")
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["methods"]
    assert metrics["n_images"] == 12 and set(m) == {"model/max", "model/mean", "model/annealed", "gray",
                                                    "oracle/max", "oracle/mean", "oracle/annealed"}
    for decoder in ("mean", "annealed"):
        assert m[f"model/{decoder}"]["auc"] > m["gray"]["auc"] + 1, m
    assert m["oracle/mean"]["auc"] > m["gray"]["auc"]
    want = _independent_scores(run_dir)
    assert 0 < want["gray_acc"] < 1 and want["model_acc"] > want["gray_acc"], want
    for decoder in ("max", "mean", "annealed"):                   # the decoders share the argmax
        assert m[f"model/{decoder}"]["pixel_acc"] == pytest.approx(want["model_acc"], abs=1e-9)
    assert m["gray"]["pixel_acc"] == pytest.approx(want["gray_acc"], abs=1e-9)
    assert m["gray"]["psnr"] == pytest.approx(want["gray_psnr"], abs=1e-9)
    for name in ("report.html", "auc.png", "loss.png", "gallery/best-01.png", "gallery/worst-02.png"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.npz")) and not list(run_dir.rglob("gmm.npz"))   # the checkpoint holds the GMM
    html = (out / "report.html").read_text()
    assert "pooled" in html and "gallery/best-01.png" in html and "loss.png" in html
    ran.clear()
    build(tasks.Evaluate(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", gallery=2))
    assert ran.families() == []


def test_evaluate_on_another_split_builds_its_labels_with_the_runs_settings(work, photo_dataset):
    """--split: a held-out split the run never validated on (config 102 validates on 'val';
    here 'tiny', three training photos) is labelled with the run's label settings and scored."""
    over = {"max_iteration": 4, "interval_validate": 2}
    ev = tasks.Evaluate(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", split="tiny",
                        gallery=1)
    build(ev)
    metrics = json.loads(Path(ev.output().path).read_text())
    assert metrics["n_images"] == 3
    default = tasks.Evaluate(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", gallery=1)
    assert default.out_dir() != ev.out_dir() and default.out_dir().parent == ev.out_dir().parent


def test_evaluate_of_a_run_whose_val_shards_are_gone_says_how_to_rebuild_them(work, photo_dataset):
    """A finished run is complete without its caches (gc removes them); Evaluate then names
    the missing shards and the PrepareRun command that rebuilds them."""
    over = {"max_iteration": 2, "interval_validate": 2}
    args = dict(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s")
    build(tasks.TrainFCN32s(config=CFG, overrides=over, dataset=str(photo_dataset)))
    run_dir = tasks.Evaluate(**args).requires()["run"].run_dir()
    gone = Path(RunInputs.load(run_dir).val[0][1])
    shard = gone.read_bytes()
    gone.unlink()
    ev = tasks.Evaluate(**args, gallery=1)
    with pytest.raises(ShardError, match=r"1 shard file\(s\) of the run's val split are gone .*PrepareRun "
                                         r"--config 102 --arch fcn32s --overrides '\{\"max_iteration\":2,"):
        ev.run()
    assert not ev.out_dir().exists()
    luigi.task_register.Register.clear_instance_cache()     # a new command: no memoised completeness
    build(tasks.PrepareRun(**args))
    assert gone.read_bytes() == shard
    build(ev)


# ----------------------------------------------------------------------------- Evaluate --images
def _test_folder(root, n):
    """n colour photos the dataset never held (two in a subfolder), an empty and an undecodable file."""
    for i in range(n):
        write_photo(root / ("sub/" if i < 2 else "") / f"t{i}.png", seed=100 + i)
    (root / "empty.jpg").write_bytes(b"")
    (root / "broken.png").write_bytes(b"not an image at all")
    return root


def test_evaluate_images_scores_every_image_of_a_folder_with_the_runs_gmm(work, photo_dataset, tmp_path, ran):
    """--images DIR: every image below DIR (list files or not) is scored with the run's GMM and
    label settings; bad files are counted with reasons; the record says what was evaluated; a
    changed folder rebuilds only the Lab shards that hold changed files."""
    folder = _test_folder(tmp_path / "test-photos", 5)
    (folder / "files_train.txt").write_text("t2.png\n")          # a list file does not narrow 'all'
    over = {"max_iteration": 4, "interval_validate": 2}
    args = dict(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", gallery=1)
    ev = tasks.Evaluate(**args, images=str(folder))
    build(ev)
    metrics = json.loads(Path(ev.output().path).read_text())
    rec = metrics["evaluated_on"]
    assert metrics["n_images"] == 5 and rec["n_images"] == 5 and rec["folder"] == str(folder.resolve())
    assert rec["n_skipped"] == 2 and rec["skip_reasons"] == {"empty": 1, "undecodable": 1}, rec
    assert sorted(s[0] for s in rec["skipped"]) == ["broken.png", "empty.jpg"] and rec["held_out"] is True
    assert sorted(p["path"] for p in metrics["per_image"]) == ["sub/t0.png", "sub/t1.png", "t2.png", "t3.png",
                                                                "t4.png"]
    assert "folder test-photos (5 images, 2 skipped: " in (ev.out_dir() / "report.html").read_text()
    labels = ev.requires()["split"]                               # the run's own GMM, not one of the folder
    run_labels = tasks.LabelSplit.from_cfg(ev.cfg, dataset=str(photo_dataset), split="val")
    assert labels.gmm_task().sig() == run_labels.gmm_task().sig() and labels.label_dir() == run_labels.label_dir()
    assert ran.count("FitGMM") == 1 and ran.count("TrainFCN32s") == 1
    lab_dir = work / "lab" / "s32"
    before = {p.name for p in lab_dir.glob("*.h5")}
    write_photo(folder / "t5.png", seed=105)                      # the folder changes: one more photo
    ran.clear()
    ev2 = tasks.Evaluate(**args, images=str(folder))
    build(ev2)
    new = {p.name for p in lab_dir.glob("*.h5")} - before
    assert json.loads(Path(ev2.output().path).read_text())["n_images"] == 6 and ev2.out_dir() != ev.out_dir()
    n_shards = len(ev2.requires()["split"].requires()["lab"].plans)
    assert 1 <= len(new) < n_shards and ran.count("TrainFCN32s") == 0 and ran.count("FitGMM") == 0, (new, n_shards)


def test_evaluate_refuses_split_and_images_together_and_an_empty_folder(work, photo_dataset, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    args = dict(config=CFG, dataset=str(photo_dataset), arch="fcn32s")
    with pytest.raises(ConfigError, match="--split or --images, not both"):
        tasks.Evaluate(**args, split="val", images=str(empty)).requires()
    with pytest.raises(ValueError, match=r"split 'all' is empty: image folder .*nothing lists no images"):
        tasks.Evaluate(**args, images=str(empty)).requires()["split"].requires()
