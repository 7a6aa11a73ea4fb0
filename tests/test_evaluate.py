"""Metrics on known inputs, class rebalancing, and the Evaluate / ClassPrior tasks."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import tasks
from conftest import build
from pipeline.evaluate import (AUC_MAX, accuracy_curve, auc_percent, dumps, error_histogram, ab_error,
                               mean_psnr, psnr, raw_accuracy_auc)
from pipeline.prior import cluster_prior, rebalance_weights
from pipeline.shards import write_shard

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


def test_auc_pools_pixels_over_images():
    ab = np.zeros((2, 10, 10))
    near = ab + np.array([3.5, 0])[:, None, None]              # error 3.5 everywhere
    far = np.zeros((2, 30, 10)) + np.array([0, 60.5])[:, None, None]
    hist = error_histogram(ab_error(near, ab)) + error_histogram(ab_error(far, np.zeros((2, 30, 10))))
    curve = accuracy_curve(hist)
    assert curve[3] == 0 and curve[4] == pytest.approx(0.25) and curve[61] == 1.0
    expected = 0.25 * (AUC_MAX - 4 + 0.5) + 0.75 * (AUC_MAX - 61 + 0.5)
    assert auc_percent(curve) == pytest.approx(100 * expected / AUC_MAX)


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
    import train.loop
    seen = []

    def fake_fit(run_dir, cfg, arch, data, **kwargs):          # the weights are what matters here
        seen.append(data.get("class_weights"))
        return {}
    monkeypatch.setattr(train.loop, "fit", fake_fit)
    over = {"rebalance": 0.5}
    build(tasks.TrainFCN32s(config=CFG, overrides=over, dataset=str(photo_dataset)))
    assert ran.count("ClassPrior") == 1
    t = tasks.TrainFCN32s(config=CFG, overrides=over, dataset=str(photo_dataset))
    prior = json.loads(Path(t.requires()["prior"].output().path).read_text())["prior"]
    assert len(prior) == 4 and sum(prior) == pytest.approx(1.0)
    np.testing.assert_allclose(seen[-1], rebalance_weights(prior, 0.5))
    assert np.dot(prior, seen[-1]) == pytest.approx(1.0)
    ran.clear()                                                 # another lambda: same prior, new run
    build(tasks.TrainFCN32s(config=CFG, overrides={"rebalance": 0.2}, dataset=str(photo_dataset)))
    assert ran.families() == ["TrainFCN32s"]
    ran.clear()                                                 # off: no prior, no weights
    build(tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset)))
    assert ran.families() == ["TrainFCN32s"] and seen[-1] is None
    assert "prior" not in tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset)).requires()


# ----------------------------------------------------------------------------- Evaluate
def test_overfit_run_beats_gray_and_evaluate_is_stale_only(work, photo_dataset, ran):
    """Config 102 over-fitted on the train photos, evaluated on the same photos."""
    over = {"val_split": "train", "max_iteration": 30, "interval_validate": 30, "batch_size": 2}
    ev = tasks.Evaluate(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", gallery=2)
    build(ev)
    assert ran.count("Evaluate") == 1 and ran.count("TrainFCN32s") == 1
    out = ev.out_dir()
    assert out.parent == ev.train_task().run_dir().parent and out.name.startswith(ev.train_task().run_dir().name)
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["methods"]
    assert metrics["n_images"] == 12 and set(m) == {"model/max", "model/mean", "model/annealed", "gray",
                                                    "oracle/max", "oracle/mean", "oracle/annealed"}
    for decoder in ("mean", "annealed"):
        assert m[f"model/{decoder}"]["auc"] > m["gray"]["auc"] + 1, m
    assert m["oracle/mean"]["pixel_acc"] == 1.0 and m["oracle/mean"]["auc"] > m["gray"]["auc"]
    for name in ("report.html", "auc.png", "loss.png", "gmm.npz", "gallery/best-01.png", "gallery/worst-02.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "pooled" in html and "gallery/best-01.png" in html and "loss.png" in html
    ran.clear()
    build(tasks.Evaluate(config=CFG, overrides=over, dataset=str(photo_dataset), arch="fcn32s", gallery=2))
    assert ran.families() == []
