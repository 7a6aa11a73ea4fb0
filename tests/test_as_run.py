"""The original's runs as they ran: configs 37/44/45 and the settings they need
(best_by, bn_gamma_init, shuffle, the GMM sample size).  CPU, 32 px photos, seconds."""
import pytest
import torch

from models.fcn import init_bn_gamma
from pipeline.config import SCHEMA, ConfigError, resolve_config
from test_train import QUIET, _build_shards, _cfg, _inputs, _log, _valid
from train import fit as fit_module
from train.best import best_score, is_better
from train.data import EpochSampler, ShardDataset
from train.checkpoint import load_checkpoint
from train.fit import build_colorizer, fit

AS_RUN = {"best_by": "mean_iou", "bn_gamma_init": "uniform", "im_size": 376, "precision": "fp32"}


def _diff(a, b):
    return {k: (a[k], b[k]) for k in a if a[k] != b[k] and k != "config"}


# ----------------------------------------------------------------------------- the configs
def test_as_run_configs_differ_from_the_originals_only_in_how_they_ran():
    as_run = {k: (v, AS_RUN[k]) for k, v in (("best_by", "val_loss"), ("bn_gamma_init", "one"), ("im_size", 256),
                                              ("precision", "auto"))}
    assert _diff(resolve_config(7), resolve_config(37)) == {**as_run, "shuffle": (True, False)}
    assert _diff(resolve_config(14), resolve_config(44)) == {**as_run, "gmm_images": (5000, 1000)}
    assert _diff(resolve_config(15), resolve_config(45)) == {**as_run, "gmm_images": (5000, 1000),
                                                            "init_config": (14, 44)}
    # 45 starts from 44 and shares its GMM (and label shards): every label key is equal
    assert _diff(resolve_config(44), resolve_config(45)) == {"init_config": (None, 44)}


def test_as_run_values():
    c37, c44, c45 = (resolve_config(n) for n in (37, 44, 45))
    assert (c37["train_split"], c37["val_split"], c37["n_clusters"], c37["img_lowpass"]) == ("tiny", "tiny", 32, 1)
    assert (c37["optim"], c37["lr"], c37["momentum"], c37["max_iteration"], c37["shuffle"]) == \
        ("sgd", 1e-8, 0.9, 10_000, False)
    assert _diff(resolve_config(7), c37)["im_size"] == (256, 376)
    for c in (c44, c45):
        assert (c["optim"], c["lr"], c["n_clusters"], c["img_lowpass"], c["val_split"]) == \
            ("adam", 1e-6, 16, 8, "small")
        assert (c["gmm_images"], c["gmm_pixels"], c["gmm_seed"], c["shuffle"]) == (1000, 20, 0, True)
    for c in (c37, c44, c45):
        assert (c["best_by"], c["bn_gamma_init"], c["batch_size"], c["flip"], c["kl_reduction"]) == \
            ("mean_iou", "uniform", 1, False, "mean_k")
        assert c["im_size"] == 376 and c["im_size"] % c["img_lowpass"] == 0
        assert c["precision"] == "fp32"             # the original ran fp32, on a GPU too
    assert c45["init_config"] == 44 and c44["init_config"] is None


@pytest.mark.parametrize("key, bad, match", [
    ("best_by", "iou", r"best_by must be one of 'val_loss', 'mean_iou', got 'iou'$"),
    ("bn_gamma_init", "ones", r"bn_gamma_init must be one of 'one', 'uniform', got 'ones'$"),
    ("shuffle", 0, r"shuffle must be true or false, got 0$"),
])
def test_new_keys_are_checked(key, bad, match):
    assert key in SCHEMA and SCHEMA[key].doc
    with pytest.raises(ConfigError, match=match):
        resolve_config(14, {key: bad})


# ----------------------------------------------------------------------------- best_by
def test_is_better_by_loss_or_by_mean_iou():
    assert is_better(0.5, 1.0, "val_loss") and not is_better(1.5, 1.0, "val_loss")
    assert is_better(0.6, 0.5, "mean_iou") and not is_better(0.4, 0.5, "mean_iou")
    assert not is_better(0.5, 0.5, "mean_iou") and is_better(0.0, None, "mean_iou")
    assert not is_better(float("nan"), None, "mean_iou")
    row = {"loss": 2.0, "mean_iu": 0.3}
    assert (best_score(row, "val_loss"), best_score(row, "mean_iou")) == (2.0, 0.3)
    with pytest.raises(ValueError, match="best_by must be one of"):
        best_score(row, "acc")


@pytest.fixture(scope="module")
def photos4(tmp_path_factory):
    return _build_shards(tmp_path_factory.mktemp("photos4"), ["astronaut", "chelsea", "coffee", "rocket"],
                         factor=2)


def _best_by_cfg(best_by):
    # seed 2: the validation loss falls to the end (best at 8) while the mean IoU tops out at 6
    # and only equals it at 8, so the two criteria pick different checkpoints
    return _cfg(max_iteration=8, interval_validate=2, best_by=best_by, seed=2)


@pytest.fixture(scope="module")
def by_loss_and_by_iou(tmp_path_factory, photos4):
    """The same run (same seed) with each best_by: {best_by: (run folder, fit's result)}."""
    runs = {}
    for best_by in ("val_loss", "mean_iou"):
        run = tmp_path_factory.mktemp("best") / best_by
        runs[best_by] = run, fit(run, _inputs(photos4, _best_by_cfg(best_by)), device="cpu", log=QUIET)
    return runs


def test_best_by_mean_iou_keeps_the_best_iou_checkpoint(by_loss_and_by_iou):
    """best.pt is the first best of best_by's column in log.csv, and the two criteria
    disagree on this run (validation loss still falls when the mean IoU no longer rises)."""
    picked = {}
    for best_by, (run, result) in by_loss_and_by_iou.items():
        rows = _valid(_log(run))
        loss = [(float(r["loss"]), int(r["iteration"])) for r in rows]
        iou = [(-float(r["mean_iu"]), int(r["iteration"])) for r in rows]     # first of the highest
        expected = min(loss) if best_by == "val_loss" else min(iou)
        best = load_checkpoint(run / "best.pt")
        assert best["iteration"] == result["best_iteration"] == expected[1]
        assert best["best_score"] == pytest.approx(abs(expected[0]))
        assert result["best_val_loss"] == pytest.approx(dict((i, v) for v, i in loss)[expected[1]])
        picked[best_by] = expected[1]
    assert picked == {"val_loss": 8, "mean_iou": 6}


def test_best_by_mean_iou_survives_a_resume(tmp_path, photos4, by_loss_and_by_iou):
    """Stopped at the best-IoU validation (6), resumed: the equal IoU at 8 is no new best."""
    cfg = _best_by_cfg("mean_iou")
    part = fit(tmp_path, _inputs(photos4, cfg), device="cpu", log=QUIET, stop_after=6)
    assert not part["complete"] and part["best_iteration"] == 6
    resumed = fit(tmp_path, _inputs(photos4, cfg), device="cpu", log=QUIET)
    assert resumed["best_iteration"] == by_loss_and_by_iou["mean_iou"][1]["best_iteration"] == 6
    assert load_checkpoint(tmp_path / "best.pt")["iteration"] == 6


# ----------------------------------------------------------------------------- BatchNorm gamma
def _gammas(net):
    return torch.cat([m.weight.detach().flatten() for m in net.modules()
                      if isinstance(m, torch.nn.BatchNorm2d)])


def test_bn_gamma_init_uniform_is_in_0_1_and_seed_stable(photos4):
    def built(seed, mode):
        torch.manual_seed(seed)
        cfg = _cfg(bn_gamma_init=mode)
        return _gammas(build_colorizer(_inputs(photos4, cfg), log=QUIET, initialise=False).net)
    ones = built(0, "one")
    assert torch.equal(ones, torch.ones_like(ones))
    a, b, c = built(0, "uniform"), built(0, "uniform"), built(1, "uniform")
    assert len(a) == len(ones) > 100
    assert a.min() > 0 and a.max() < 1 and 0.4 < a.mean() < 0.6     # U(0, 1), not a constant
    assert torch.equal(a, b) and not torch.equal(a, c)              # the seed decides them
    biases = [m.bias for m in build_colorizer(_inputs(photos4, _cfg(bn_gamma_init="uniform")),
                                              log=QUIET, initialise=False).net.modules()
              if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.count_nonzero(bias) == 0 for bias in biases)
    with pytest.raises(ValueError, match="bn_gamma_init must be one of"):
        init_bn_gamma(torch.nn.BatchNorm2d(2), "zero")


# ----------------------------------------------------------------------------- shuffle
def test_shuffle_off_trains_in_file_order(tmp_path, photos4, monkeypatch):
    """shuffle false: every epoch reads the training images in the split list's order."""
    ds = ShardDataset(photos4["train"], flip=False)
    paths = [ds.get_visual(i)["path"] for i in range(len(ds))]
    assert paths == ["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]
    for epoch in (0, 1):
        for shuffle, expected in ((False, True), (True, False)):
            sampler = EpochSampler(len(ds), shuffle, seed=0, shards=ds.shard_ids)
            sampler.set_epoch(epoch)
            assert ([i for i, _ in sampler] == list(range(len(ds)))) is expected
    ds.close()

    seen = []                                     # what fit hands the training loader
    real = fit_module.make_loader

    def spy(dataset, batch_size, shuffle, *args, **kwargs):
        seen.append(shuffle)
        return real(dataset, batch_size, shuffle, *args, **kwargs)
    monkeypatch.setattr(fit_module, "make_loader", spy)
    for shuffle in (False, True):
        seen.clear()
        fit(tmp_path / str(shuffle), _inputs(photos4, _cfg(max_iteration=2, interval_validate=2,
                                                            shuffle=shuffle)), device="cpu", log=QUIET)
        assert seen == [shuffle, False]           # train loader as configured; validation never shuffled


def test_runs_listing_reports_the_best_as_training_picks_it():
    """`colorize-fcn runs` on a stopped run (no done.json) reads the best from log.csv by the
    run's best_by, as training chose best.pt."""
    from inference.runs import best_from_log
    rows = [{"split": "valid", "iteration": str(it), "loss": str(loss), "mean_iu": str(iou)}
            for it, loss, iou in ((5, 2.0, 0.1), (10, 1.0, 0.1), (15, 1.5, 0.3), (20, 1.2, 0.3), (25, "nan", "nan"))]
    rows.insert(1, {"split": "train", "iteration": "5", "loss": "0.1", "mean_iu": "0.9"})
    assert best_from_log(rows) == best_from_log(rows, "val_loss") == (1.0, 10)
    assert best_from_log(rows, "mean_iou") == (1.5, 15)              # the first of the highest IoU
    assert best_from_log([], "mean_iou") == (None, None)
