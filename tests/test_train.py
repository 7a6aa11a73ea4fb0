"""Training: metrics, loss, dataset, determinism, resume, best selection, over-fit.

CPU only and fast: 32x32 images, K=4 clusters, width 1/16 networks.
"""
import csv
import json
import pickle

import numpy as np
import pytest
import torch

from pipeline.color import ab_to_hue_chroma, rgb_to_lab
from pipeline.config import resolve_config
from pipeline.gmm import fit_gmm
from pipeline.labels import target_posteriors
from pipeline.shards import decode_L, encode_lab, write_shard
from models.colorizer import Colorizer
from models.decoders import cluster_centres_ab, decode, upsample_posteriors as upsample_targets
from models.device import resolve_device
from pipeline.run_inputs import RunInputs
from train.checkpoint import load_checkpoint, save_checkpoint
from train.data import EpochSampler, ShardDataset, make_loader
from train.best import is_better
from train.fit import fit
from train.steps import TrainState, evaluate, train_one_epoch
from train.loss import kl_loss
from train.metrics import ConfusionMeter, confusion_matrix, scores
from train.rng import rng_states, seed_everything, set_rng_states
from train.runlog import LOG_COLUMNS, append_rows, truncate_log as _truncate_log
from train.visual import region_average, tile_image

CPU = torch.device("cpu")
QUIET = lambda *a: None  # noqa: E731
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry"]
K, SIZE = 4, 32


# ----------------------------------------------------------------------------- fixtures
def _photos(names, size=SIZE):
    import skimage.data
    from PIL import Image
    out = []
    for name in names:
        im = getattr(skimage.data, name)()[..., :3]
        h, w = im.shape[:2]
        s = min(h, w)
        im = im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)))
    return np.stack(out)


def _build_shards(folder, names, factor, per_shard=4, empty_shard=True):
    """Real Lab + label shards of bundled photos (as the pipeline writes them)."""
    lab = rgb_to_lab(_photos(names))                                   # (N, S, S, 3)
    ab = np.moveaxis(lab[..., 1:], -1, 1)                               # (N, 2, S, S)
    gmm = fit_gmm(ab_to_hue_chroma(lab[..., 1], lab[..., 2]).reshape(-1, 2), K, seed=0)
    post = np.stack([target_posteriors(a, gmm, factor) for a in ab])   # (N, K, s, s)
    pairs = []
    for i in range(0, len(names), per_shard):
        sl, paths = slice(i, i + per_shard), [f"{n}.png" for n in names[i:i + per_shard]]
        lab_path, label_path = folder / f"lab-{i}.h5", folder / f"label-{i}.h5"
        L_q, ab_q = encode_lab(lab[sl, ..., 0], ab[sl])
        write_shard(lab_path, {"L": L_q, "ab": ab_q, "paths": paths}, {"im_size": SIZE})
        write_shard(label_path, {"posteriors": post[sl].astype(np.float16), "paths": paths}, {})
        pairs.append((str(lab_path), str(label_path)))
    if empty_shard:                                      # a shard whose files were all skipped
        e_lab, e_label = folder / "lab-empty.h5", folder / "label-empty.h5"
        write_shard(e_lab, {"L": np.zeros((0, SIZE, SIZE), np.uint8),
                            "ab": np.zeros((0, 2, SIZE, SIZE), np.int8), "paths": []}, {})
        s = SIZE // factor
        write_shard(e_label, {"posteriors": np.zeros((0, K, s, s), np.float16), "paths": []}, {})
        pairs.insert(1, (str(e_lab), str(e_label)))
    return {"train": pairs, "val": pairs, "mean_L": float(lab[..., 0].mean()), "gmm": gmm,
            "n_clusters": K}


def _inputs(data, cfg, arch="fcn32s", init=None, class_weights=None):
    """The RunInputs a prepared run folder would hold for these shards."""
    return RunInputs(arch=arch, cfg=dict(cfg), train=data["train"], val=data["val"], mean_L=data["mean_L"],
                     gmm={k: np.asarray(v).tolist() for k, v in data["gmm"].items()},
                     init_checkpoint=init, class_weights=class_weights)


def _colorizer(data, arch, cfg):
    return Colorizer(arch, K, cfg["width"], cfg["im_size"], data["mean_L"], data["gmm"])


@pytest.fixture(scope="module")
def photos4(tmp_path_factory):
    """4 photos, 8x low-pass targets (4x4): what an FCN-32s on 32x32 input can resolve."""
    return _build_shards(tmp_path_factory.mktemp("photos4"), PHOTOS[:4], factor=8)


@pytest.fixture(scope="module")
def photos6(tmp_path_factory):
    """6 photos in 2 shards (+1 empty): 3 steps per epoch at batch 2, so checkpoints fall mid-epoch."""
    return _build_shards(tmp_path_factory.mktemp("photos6"), PHOTOS, factor=2)


def _cfg(**kw):
    base = dict(batch_size=2, max_iteration=20, interval_validate=5, flip=True, lr=1e-3)
    base.update(kw)
    return resolve_config(102, base)


def _log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _valid(rows):
    return [r for r in rows if r["split"] == "valid"]


# ----------------------------------------------------------------------------- metrics
def _reference_scores(label_trues, label_preds, n):
    """label_accuracy_score of the FCN reference, as a cross-check."""
    hist = np.zeros((n, n))
    for t, p in zip(label_trues, label_preds):
        mask = (t >= 0) & (t < n)
        hist += np.bincount(n * t[mask].astype(int) + p[mask], minlength=n ** 2).reshape(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        mean_iu = np.nanmean(iu)
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return dict(acc=acc, acc_cls=acc_cls, mean_iu=mean_iu, fwavacc=fwavacc)


def test_metrics_hand_example():
    target = torch.tensor([0, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 2])
    hist = confusion_matrix(pred, target, 4)
    assert hist.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    s = scores(hist)
    assert s["acc"] == pytest.approx(3 / 4)
    assert s["acc_cls"] == pytest.approx((1 + 1 + 0.5) / 3)        # class 3 absent: ignored
    assert s["mean_iu"] == pytest.approx((1 + 0.5 + 0.5) / 3)      # class 3 absent from both
    assert s["fwavacc"] == pytest.approx(0.25 * 1 + 0.25 * 0.5 + 0.5 * 0.5)


def test_metrics_class_only_predicted_counts_as_zero_iou():
    s = scores(confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4))
    assert s["acc"] == 0.5 and s["acc_cls"] == 0.5
    assert s["mean_iu"] == pytest.approx((0.5 + 0.0) / 2)          # class 0: 1/2, class 3: 0/1
    assert s["fwavacc"] == pytest.approx(0.5)
    perfect = scores(confusion_matrix(torch.arange(4), torch.arange(4), 4))
    assert all(v == 1.0 for v in perfect.values())


def test_metrics_match_fcn_reference_and_accumulate():
    g = torch.Generator().manual_seed(0)
    trues = [torch.randint(0, 5, (3, 7, 9), generator=g) for _ in range(4)]
    preds = [torch.where(torch.rand(t.shape, generator=g) < 0.6, t, torch.randint(0, 5, t.shape, generator=g))
             for t in trues]
    meter = ConfusionMeter(5)
    for t, p in zip(trues, preds):
        meter.update(p, t)
    ref = _reference_scores([t.numpy().ravel() for t in trues], [p.numpy().ravel() for p in preds], 5)
    for key, value in meter.scores().items():
        assert value == pytest.approx(ref[key], abs=1e-12)
    from_scores = ConfusionMeter(5)                                  # (N, K, H, W) scores: argmax over K
    from_scores.update(torch.nn.functional.one_hot(preds[0], 5).permute(0, 3, 1, 2).float(), trues[0])
    assert torch.equal(from_scores.hist, confusion_matrix(preds[0], trues[0], 5))


# ----------------------------------------------------------------------------- loss
def _dirichlet(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = -torch.log(torch.rand(shape, generator=g))                  # Exp(1) -> normalised = Dirichlet(1)
    return t / t.sum(1, keepdim=True)


def test_upsampled_target_is_still_a_distribution():
    target = _dirichlet((2, K, 8, 8))
    up = upsample_targets(target, (32, 32))
    assert up.shape == (2, K, 32, 32)
    assert up.min() >= 0
    torch.testing.assert_close(up.sum(1), torch.ones(2, 32, 32), atol=1e-6, rtol=0)


def test_kl_loss_properties():
    target = _dirichlet((2, K, 8, 8))
    perfect = torch.log(upsample_targets(target, (32, 32)))
    assert abs(kl_loss(perfect, target).item()) < 1e-6               # scores = log(target): KL 0
    assert abs(kl_loss(perfect + 3.0, target).item()) < 1e-6         # softmax is shift invariant
    scores_ = torch.randn(2, K, 32, 32, generator=torch.Generator().manual_seed(1))
    loss = kl_loss(scores_, target)
    up = upsample_targets(target, (32, 32))
    ref = torch.nn.functional.kl_div(torch.log_softmax(scores_, 1), up, reduction="none").sum(1).mean()
    assert loss.item() > 0.05 and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # class weights: a pixel weighs as its target's argmax cluster
    assert kl_loss(scores_, target, torch.ones(K)).item() == pytest.approx(loss.item(), rel=1e-6)
    assert kl_loss(scores_, target, torch.full((K,), 2.0)).item() == pytest.approx(2 * loss.item(), rel=1e-6)
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    per_pixel = torch.nn.functional.kl_div(torch.log_softmax(scores_, 1), up, reduction="none").sum(1)
    expected = (per_pixel * (up.argmax(1) == 0)).mean()
    assert kl_loss(scores_, target, w).item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- data
def _synthetic_shards(folder, n=5, size=8, small=4):
    """L ramps up left -> right; the target posterior of cluster 0 ramps up too: both
    asymmetric, so a flip of one without the other shows.  Both differ per image (a wrong
    row shows).  Returns (pairs, L, posteriors)."""
    L = np.tile(np.linspace(10, 90, size, dtype=np.float32), (n, size, 1))
    L += np.arange(n, dtype=np.float32)[:, None, None]               # tell images apart
    ramp = np.tile(np.linspace(0.1, 0.9, small, dtype=np.float32), (small, 1))
    post = np.zeros((n, 2, small, small), np.float32)
    post[:, 0] = ramp * (0.5 + 0.1 * np.arange(n, dtype=np.float32))[:, None, None]
    post[:, 1] = 1 - post[:, 0]
    ab = np.zeros((n, 2, size, size), np.float32)
    ab[:, 0] = 20.0
    pairs = []
    for i, sl in enumerate((slice(0, 3), slice(3, n))):
        lab, label = folder / f"lab{i}.h5", folder / f"label{i}.h5"
        L_q, ab_q = encode_lab(L[sl], ab[sl])
        write_shard(lab, {"L": L_q, "ab": ab_q, "paths": [f"{j}.png" for j in range(n)][sl]}, {})
        write_shard(label, {"posteriors": post[sl].astype(np.float16)}, {})
        pairs.append((lab, label))
    return pairs, L, post


def test_dataset_shapes_index_and_unflipped(tmp_path):
    pairs, L, post = _synthetic_shards(tmp_path)
    ds = ShardDataset(pairs, flip=False)
    assert len(ds) == 5 and (ds.image_size, ds.target_size, ds.n_classes) == (8, 4, 2)
    for i in range(5):                                               # rows of both shards, in order
        x, t = ds[i]
        assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and t.shape == (2, 4, 4)
        stored_L = decode_L(encode_lab(L[i], np.zeros((2, 8, 8)))[0])
        np.testing.assert_allclose(x[0].numpy(), stored_L)           # raw L: the Colorizer centres it
        np.testing.assert_allclose(t.numpy(), post[i], atol=1e-3)    # float16 in the shard
        torch.testing.assert_close(t.sum(0), torch.ones(4, 4), atol=2e-3, rtol=0)
    v = ds.get_visual(4)
    assert v["ab"].shape == (2, 8, 8) and v["path"] == "4.png" and v["posteriors"].shape == (2, 4, 4)
    assert (v["ab"][0] == 20).all() and (v["ab"][1] == 0).all()
    with pytest.raises(IndexError):
        ds[5]


def test_flip_applies_to_input_and_target_together(tmp_path):
    pairs, _, _ = _synthetic_shards(tmp_path)
    ds = ShardDataset(pairs, flip=True)
    torch.manual_seed(0)
    flipped = []
    for i in range(40):
        x, t = ds[i % 5] if i < 20 else ds[(i % 5, i)]                # global RNG, then per-sample seeds
        x_flipped = bool(x[0, 0, 0] > x[0, 0, -1])
        t_flipped = bool(t[0, 0, 0] > t[0, 0, -1])
        assert x_flipped == t_flipped
        flipped.append(x_flipped)
    assert 5 < sum(flipped) < 35                                     # both cases happen
    assert ds[(2, 123)][0].equal(ds[(2, 123)][0])                    # a sample seed fixes the flip
    v = ds.get_visual(0)                                             # visuals are never flipped
    assert v["L"][0, 0] < v["L"][0, -1]


def test_dataset_pickles_and_workers_match_main_process(photos6):
    ds = ShardDataset(photos6["train"], flip=True)
    assert len(ds) == 6                                              # the empty shard is skipped
    ds[0]                                                            # opens handles ...
    clone = pickle.loads(pickle.dumps(ds))                           # ... which are not pickled
    assert len(clone._files) == 0 and clone[(3, 9)][0].equal(ds[(3, 9)][0])

    def batches(workers):
        loader = make_loader(ds, 2, shuffle=True, workers=workers, seed=3)
        loader.sampler.set_epoch(1)
        return [b for b in loader]
    a, b = batches(0), batches(2)
    assert len(a) == 3
    for (xa, ta), (xb, tb) in zip(a, b):
        assert xa.equal(xb) and ta.equal(tb)


def test_epoch_sampler_order_and_resume_position():
    s = EpochSampler(10, shuffle=True, seed=5)
    s.set_epoch(2)
    full = list(s)
    assert sorted(i for i, _ in full) == list(range(10))
    s.set_epoch(2, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(3)
    assert list(s) != full


# ----------------------------------------------------------------------------- checkpoints / device
def test_checkpoint_rng_round_trip_weights_only(tmp_path):
    import random
    gen = torch.Generator().manual_seed(7)
    seed_everything(1)
    states = rng_states(gen)
    save_checkpoint(tmp_path / "c.pt", {"rng": states, "x": torch.ones(2), "cfg": {"a": None}})
    draws = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)       # plain types only
    set_rng_states(load_checkpoint(tmp_path / "c.pt")["rng"], gen)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert draws[0].equal(again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and draws[3].equal(again[3])
    assert loaded["cfg"] == {"a": None}


def test_device_auto_and_cuda_fallback_log():
    lines = []
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the fallback path is not taken")
    assert resolve_device("cuda", lines.append).type == "cpu"
    assert resolve_device("auto", lines.append).type == "cpu"
    assert any("CUDA is not available: using the CPU" in line for line in lines)


def test_is_better_keeps_the_lowest_validation_loss():
    assert is_better(1.0, None)
    assert is_better(0.5, 1.0)
    assert not is_better(1.5, 1.0)                                   # the original kept this one
    assert not is_better(1.0, 1.0)
    assert not is_better(float("nan"), None) and not is_better(float("inf"), 1.0)
    best = None
    for loss in [3.0, 2.0, 2.5, 1.0, 1.2]:
        best = loss if is_better(loss, best) else best
    assert best == 1.0


def test_truncate_log_drops_rows_after_checkpoint(tmp_path):
    path = tmp_path / "log.csv"
    rows = [dict(zip(LOG_COLUMNS, [it, 0, split, 0.5, 1, 1, 1, 1, 0.1, 1.0, "tiny"]))
            for it in (5, 10, 15) for split in ("train", "valid")]
    path.write_text(",".join(LOG_COLUMNS) + "\n" + "".join(
        ",".join(str(r[c]) for c in LOG_COLUMNS) + "\n" for r in rows))
    _truncate_log(path, 10)
    assert [int(r["iteration"]) for r in _log(tmp_path)] == [5, 5, 10, 10]
    # a log written before the data_split column keeps its header when truncated and appended to
    old = LOG_COLUMNS[:-1]
    path.write_text(",".join(old) + "\n" + "".join(",".join(str(r[c]) for c in old) + "\n" for r in rows))
    _truncate_log(path, 10)
    append_rows(path, [dict(rows[-1], iteration=20)])
    assert path.read_text().splitlines()[0] == ",".join(old)
    assert [(r["iteration"], None in r) for r in _log(tmp_path)] == [("5", False)] * 2 + [("10", False)] * 2 + [
        ("20", False)]


# ----------------------------------------------------------------------------- fit
def test_fit_is_deterministic_and_writes_its_run_folder(tmp_path, photos6):
    cfg = _cfg(max_iteration=6, interval_validate=3)
    # the same run twice, then with 2 loader workers: flips are seeded per sample, so the
    # number of workers does not change the run either
    results = [fit(tmp_path / f"run{i}", _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET,
                   loader_workers=workers) for i, workers in enumerate((0, 0, 2))]
    logs = [_log(tmp_path / f"run{i}") for i in range(3)]
    for other in logs[1:]:
        assert [r["loss"] for r in logs[0]] == [r["loss"] for r in other]
        assert [r["mean_iu"] for r in logs[0]] == [r["mean_iu"] for r in other]
    assert results[0]["best_val_loss"] == results[1]["best_val_loss"] == results[2]["best_val_loss"]

    run = tmp_path / "run0"
    with open(run / "log.csv") as f:
        assert next(csv.reader(f)) == list(LOG_COLUMNS)
    assert [(r["iteration"], r["split"]) for r in logs[0]] == [
        ("3", "train"), ("3", "valid"), ("6", "train"), ("6", "valid")]
    conf = json.loads((run / "config.json").read_text())
    assert conf["arch"] == "fcn32s" and conf["data"]["n_train"] == 6 and conf["cfg"]["lr"] == 1e-3
    assert set(conf["git"]) == {"revision", "dirty"} and conf["git"]["revision"]
    for name in ("checkpoint.pt", "best.pt", "loss.png", "iou.png", "done.json",
                 "tiles/iter000003.jpg", "tiles/iter000006.jpg"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    from PIL import Image
    tile = Image.open(run / "tiles/iter000006.jpg")
    assert tile.size[1] >= 4 * SIZE and tile.size[0] >= 5 * SIZE      # 4 val images x 5 panels
    r = results[0]
    assert r["iterations"] == 6 and r["complete"] and r["images_per_s"] > 0
    # what the files hold: the last validation row is the result's final scores, best.pt the
    # lowest validation loss of the log (with its weights), done.json the result
    last = logs[0][-1]
    assert {k: pytest.approx(float(last[k])) for k in r["final"]} == r["final"]
    valid = [(float(v["loss"]), int(v["iteration"])) for v in _valid(logs[0])]
    best = load_checkpoint(run / "best.pt")
    assert (best["iteration"], r["best_iteration"]) == (min(valid)[1],) * 2
    assert r["best_val_loss"] == pytest.approx(min(valid)[0]) and 0 < r["best_val_loss"] < 10
    last_weights = load_checkpoint(run / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(best["state_dict"][k], v) for k, v in last_weights.items()) == (best["iteration"] == 6)
    done = json.loads((run / "done.json").read_text())
    assert done["best_iteration"] == r["best_iteration"] and done["iterations"] == 6
    assert done["final"] == pytest.approx(r["final"])


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, photos6):
    cfg = _cfg(max_iteration=20, interval_validate=5)
    full = fit(tmp_path / "full", _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET)

    class Crash(Exception):
        pass

    def crash_at_12(iteration, total, loss):
        if iteration == 12:
            raise Crash()
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        fit(run, _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET, on_step=crash_at_12)
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 10
    assert load_checkpoint(run / "checkpoint.pt")["position"] == 2   # mid-epoch: 3 steps per epoch
    with open(run / "log.csv", "a") as f:                            # a row logged after the checkpoint
        f.write("15,4,train,9.9,0,0,0,0,0.001,1.0\n")
    seen = []
    resumed = fit(run, _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET,
                  on_step=lambda it, total, loss: seen.append(it))
    assert seen == list(range(11, 21)) and resumed["resumed_from"] == 10

    rows = _log(run)
    assert [(int(r["iteration"]), r["split"]) for r in rows] == [
        (it, s) for it in (5, 10, 15, 20) for s in ("train", "valid")]
    assert [r["loss"] for r in rows] == [r["loss"] for r in _log(tmp_path / "full")]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["state_dict"]
    b = load_checkpoint(run / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)                   # same final weights
    assert resumed["best_val_loss"] == full["best_val_loss"]

    # stop_after ends a session at a checkpoint; the next call completes the run
    run2 = tmp_path / "stopped"
    part = fit(run2, _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET, stop_after=10)
    assert part["iterations"] == 10 and not part["complete"] and not (run2 / "done.json").exists()
    fit(run2, _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET)
    c = load_checkpoint(run2 / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    again = fit(run2, _inputs(photos6, cfg, "fcn32s"), device="cpu", log=QUIET)   # finished: nothing to do
    assert again["iterations"] == 20 and len(_log(run2)) == 8

    # best.pt is the LOWEST validation loss of the log
    valid = [(float(r["loss"]), int(r["iteration"])) for r in _valid(rows)]
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == min(valid)[1] == resumed["best_iteration"]
    assert best["best_loss"] == pytest.approx(min(valid)[0])

    with pytest.raises(ValueError, match="lr"):                      # another experiment: refused
        fit(run, _inputs(photos6, _cfg(max_iteration=20, interval_validate=5, lr=5e-3)),
            device="cpu", log=QUIET)


# ----------------------------------------------------------------------------- over-fit
OVERFIT = dict(lr=1e-3, weight_decay=0.0, batch_size=4, max_iteration=150, interval_validate=25,
               flip=False, img_lowpass=8, seed=0)


def _initial_loss(data, arch, cfg):
    """Validation loss of the freshly initialised network fit starts from (same seed)."""
    seed_everything(cfg["seed"])
    model = _colorizer(data, arch, cfg)
    ds = ShardDataset(data["val"], flip=False)
    return evaluate(model, make_loader(ds, 4, False, 0, 0), CPU, K)["loss"]


@pytest.fixture(scope="module")
def overfit32(tmp_path_factory, photos4):
    cfg = resolve_config(102, OVERFIT)
    run = tmp_path_factory.mktemp("overfit") / "fcn32s"
    result = fit(run, _inputs(photos4, cfg, "fcn32s"), device="cpu", log=QUIET)
    return cfg, run, result, _initial_loss(photos4, "fcn32s", cfg)


def test_fcn32s_overfits_four_photos(overfit32):
    cfg, run, result, initial = overfit32
    rows = _valid(_log(run))                       # val = train images, eval mode
    final = result["final"]
    print(f"\nFCN-32s over-fit: initial loss {initial:.4f}, best {result['best_val_loss']:.4f} "
          f"@{result['best_iteration']}, final loss {final['loss']:.4f}, final mean IoU {final['mean_iu']:.3f}")
    assert initial > 0.5
    assert result["best_val_loss"] <= 0.1 * initial                # >= 90% lower
    assert final["loss"] <= 0.1 * initial
    assert final["mean_iu"] > 0.8
    assert max(float(r["mean_iu"]) for r in rows) > 0.8


def test_targets_unrelated_to_the_input_cannot_be_fitted(photos4):
    """Negative control: every draw pairs an image with a RANDOM image's target, so the input
    carries no information about the target.  (A fixed permutation of targets is no control:
    4 images are memorised just as well, IoU ~0.89 when measured; a frozen random trunk with
    a trained score layer also reached IoU ~0.87 -- random features suffice for 4 images.)"""
    ds = ShardDataset(photos4["train"], flip=False)

    class Repaired(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, item):
            x, _ = ds[item]
            return x, ds[int(torch.randint(len(ds), ()))][1]

    cfg = dict(resolve_config(102, OVERFIT), max_iteration=100)
    seed_everything(0)
    model = _colorizer(photos4, "fcn32s", cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    loader = make_loader(Repaired(), 4, shuffle=True, workers=0, seed=0, drop_last=True)
    state = TrainState(meter=ConfusionMeter(K, CPU))
    while state.iteration < cfg["max_iteration"]:
        loader.sampler.set_epoch(state.epoch, start=state.position)
        train_one_epoch(model, loader, optimizer, CPU, state, cfg["max_iteration"])
    result = evaluate(model, make_loader(ds, 4, False, 0, 0), CPU, K)
    print(f"\nre-paired targets: loss {result['loss']:.4f}, mean IoU {result['mean_iu']:.3f}")
    assert result["mean_iu"] < 0.5


def test_fcn16s_from_fcn32s_does_not_get_worse(tmp_path, overfit32, photos4):
    cfg32, run32, result32, _ = overfit32
    cfg = dict(cfg32, lr=3e-4, max_iteration=100)
    result = fit(tmp_path / "fcn16s", _inputs(photos4, cfg, "fcn16s", init=str(run32 / "best.pt")),
                 device="cpu", log=QUIET)
    print(f"\nFCN-16s: best {result['best_val_loss']:.4f}, final {result['final']['loss']:.4f} "
          f"(IoU {result['final']['mean_iu']:.3f}) vs FCN-32s best {result32['best_val_loss']:.4f}")
    assert result["best_val_loss"] <= result32["best_val_loss"]
    assert result["final"]["loss"] <= result32["best_val_loss"]
    model = Colorizer.from_checkpoint(load_checkpoint(tmp_path / "fcn16s" / "best.pt"))
    assert model.arch == "fcn16s" and model.settings()["mean_L"] == photos4["mean_L"]


# ----------------------------------------------------------------------------- visual
def test_region_average_and_tile_layout(photos4):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, :2] = (200, 0, 0)
    rgb[:, 2:] = (0, 0, 100)
    rgb[0, 0] = (0, 0, 100)
    labels = np.zeros((4, 4), np.int64)
    labels[:, 2:] = 1
    out = region_average(rgb, labels, 3)
    assert tuple(out[1, 0]) == (175, 0, 12) and tuple(out[0, 3]) == (0, 0, 100)

    ds = ShardDataset(photos4["train"], flip=False)
    v = ds.get_visual(0)
    from pipeline.color import lab_to_rgb
    true = lab_to_rgb(np.concatenate([v["L"][..., None], np.moveaxis(v["ab"], 0, -1)], -1))
    perfect = upsample_targets(torch.from_numpy(v["posteriors"])[None], (SIZE, SIZE))[0].numpy()
    centres = torch.as_tensor(cluster_centres_ab(photos4["gmm"]))
    tile = tile_image(true, v["posteriors"], v["L"], perfect, decode(torch.as_tensor(perfect), centres, "mean").numpy())
    assert tile.dtype == np.uint8 and tile.shape == (SIZE, 5 * SIZE + 4 * 2, 3)   # 5 panels, 2 px gaps
    step = SIZE + 2
    np.testing.assert_array_equal(tile[:, :SIZE], true)
    np.testing.assert_array_equal(tile[:, step:step + SIZE], tile[:, 3 * step:3 * step + SIZE])
    gray = tile[:, 2 * step:2 * step + SIZE]
    assert (gray[..., 0] == gray[..., 1]).all()
    assert tile_image(true, v["posteriors"], v["L"], perfect).shape[1] == 4 * step - 2
