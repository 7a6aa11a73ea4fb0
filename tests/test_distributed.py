"""Distributed (DDP) training on CPU: 2 processes, gloo, loopback.

One spawn of 2 ranks (module fixture) runs, in one process group:
  - SyncBatchNorm on a fixed batch split over the ranks (vs BatchNorm2d on the whole batch),
  - a run with dropout off, compared with a single process at the same global batch,
  - a run with dropout on, uninterrupted, and the same run stopped at its iteration-2
    checkpoint (mid-epoch) then resumed: they must end at the same weights.
Tiny everything: 32x32 images, K=4, width 1/16, global batch 4 (2 per rank), 12 training
images (3 steps per epoch), 5 validation images (unequal shares: 3 and 2).
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from pipeline.color import ab_to_hue_chroma, rgb_to_lab
from pipeline.config import resolve_config
from pipeline.gmm import fit_gmm
from pipeline.labels import target_posteriors
from pipeline.shards import encode_lab, write_shard
from train.checkpoint import load_checkpoint
from train.data import EpochSampler
from train.fit import fit
from train.stop import TrainingStopped
from test_train import _inputs, _photos   # the same bundled photos at 32 px, RunInputs

REPO = Path(__file__).resolve().parents[1]
QUIET = lambda *a, **k: None  # noqa: E731
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry",
          "colorwheel", "hubble_deep_field"]
K, SIZE, WORLD = 4, 32, 2
CFG = dict(batch_size=4, max_iteration=3, interval_validate=2, flip=True, lr=1e-3)


# ----------------------------------------------------------------------------- data




def build_data(folder):
    """12 train images (3 shards, 4 photos seen twice), 5 val images (2 shards), 8x low-pass
    targets (4x4)."""
    lab = rgb_to_lab(_photos(PHOTOS, SIZE))                                   # (8, S, S, 3)
    ab = np.moveaxis(lab[..., 1:], -1, 1)
    gmm = fit_gmm(ab_to_hue_chroma(lab[..., 1], lab[..., 2]).reshape(-1, 2), K, seed=0)
    post = np.stack([target_posteriors(a, gmm, 8) for a in ab])

    def shard(name, rows):
        paths = [f"{PHOTOS[i]}.png" for i in rows]
        lab_path, label_path = folder / f"lab-{name}.h5", folder / f"label-{name}.h5"
        L_q, ab_q = encode_lab(lab[rows, ..., 0], ab[rows])
        write_shard(lab_path, {"L": L_q, "ab": ab_q, "paths": paths}, {"im_size": SIZE})
        write_shard(label_path, {"posteriors": post[rows].astype(np.float16), "paths": paths}, {})
        return str(lab_path), str(label_path)
    return {"train": [shard("t0", [0, 1, 2, 3]), shard("t1", [4, 5, 6, 7]), shard("t2", [1, 3, 5, 7])],
            "val": [shard("v0", [1, 6, 3]), shard("v1", [0, 7])],
            "mean_L": float(lab[..., 0].mean()), "gmm": gmm, "n_clusters": K}


def _no_dropout_model(arch, n_classes, width=1.0):
    from models.fcn import FCN
    model = FCN(arch, n_classes, width)
    model.trunk.drop = nn.Identity()
    return model


def _log(run_dir):
    with open(Path(run_dir) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _losses(run_dir, split):
    return [float(r["loss"]) for r in _log(run_dir) if r["split"] == split]


# ----------------------------------------------------------------------------- the ranks
def _syncbn_check(rank, world, out):
    """Forward/backward of a batch split over the ranks through SyncBatchNorm (weights and
    input the same on every rank); saves this rank's output, input grad and param grads."""
    from train.ddp import convert_sync_batchnorm
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=g) * 3 + 1
    dy = torch.randn(4, 3, 5, 6, generator=g)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn = convert_sync_batchnorm(nn.Sequential(bn), "cpu")[0]
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    xr = x[share].clone().requires_grad_(True)
    y = bn(xr)
    y.backward(dy[share])
    torch.save({"y": y.detach(), "dx": xr.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
                "running_mean": bn.running_mean, "running_var": bn.running_var,
                "type": type(bn).__name__}, Path(out) / f"syncbn-{rank}.pt")


def _rank_main(rank, world, port, jobs, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)                       # 2 ranks on a small CI machine
    import models.fcn
    from train import ddp
    r, w, device = ddp.setup("cpu")
    assert (r, w, device.type) == (rank, world, "cpu")
    try:
        _syncbn_check(rank, world, out)
        real_build = models.fcn.build
        for job in jobs:
            job = dict(job)
            models.fcn.build = _no_dropout_model if job.pop("no_dropout") else real_build
            signal_at, tag = job.pop("signal_at", None), job.pop("tag", job.get("stop_after"))
            losses = []

            def on_step(it, n, loss):
                losses.append(ddp.mean_over_ranks(loss))
                if it == signal_at and rank == 1:       # rank 1 alone gets a stop signal
                    os.kill(os.getpid(), signal.SIGTERM)
            try:
                fit(device=device, log=QUIET, distributed=True, on_step=on_step, **job)
            except TrainingStopped as e:
                (Path(job["run_dir"]) / f"stopped-rank{rank}.txt").write_text(str(e.iteration))
            if rank == 0:                               # per-step losses (all-reduced means)
                (Path(job["run_dir"]) / f"steps-{tag}.json").write_text(json.dumps(losses))
        models.fcn.build = real_build
    finally:
        ddp.teardown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every distributed run of this module, in one spawn of 2 ranks; plus the single process."""
    import torch.multiprocessing as mp
    root = tmp_path_factory.mktemp("ddp")
    data = build_data(root)
    cfg = resolve_config(102, CFG)
    inputs = _inputs(data, cfg, "fcn32s")
    inputs_v3 = _inputs(data, resolve_config(102, dict(CFG, interval_validate=3)), "fcn32s")
    jobs = [dict(run_dir=str(root / "ddp-nodrop"), inputs=inputs, no_dropout=True),
            dict(run_dir=str(root / "ddp-full"), inputs=inputs, no_dropout=False),
            dict(run_dir=str(root / "ddp-resumed"), inputs=inputs, no_dropout=False, stop_after=2),
            dict(run_dir=str(root / "ddp-resumed"), inputs=inputs, no_dropout=False),
            # validated at 3 only; rank 1 gets SIGTERM at step 1, the ranks agree at step 2
            dict(run_dir=str(root / "ddp-signal"), inputs=inputs_v3, no_dropout=False, log_every=1,
                 signal_at=1, tag="signal"),
            dict(run_dir=str(root / "ddp-signal"), inputs=inputs_v3, no_dropout=False, tag="resumed")]
    mp.spawn(_rank_main, args=(WORLD, _free_port(), jobs, str(root)), nprocs=WORLD, join=True)
    return root, data, cfg


# ----------------------------------------------------------------------------- tests
def test_sampler_splits_each_global_batch_over_the_ranks():
    single = EpochSampler(11, shuffle=True, seed=3, global_batch=None)
    single.set_epoch(2)
    full = list(single)
    for start in (0, 4):                                            # a resumed run starts mid-epoch
        shares = []
        for rank in range(WORLD):
            s = EpochSampler(11, shuffle=True, seed=3, rank=rank, world_size=WORLD, global_batch=4)
            s.set_epoch(2, start=start)
            shares.append(list(s))
            assert len(s) == len(shares[-1]) == (11 - start) // 4 * 2
        for step in range((11 - start) // 4):                      # per-rank batch 2, global 4
            together = shares[0][2 * step:2 * step + 2] + shares[1][2 * step:2 * step + 2]
            assert sorted(together) == sorted(full[start + 4 * step:start + 4 * step + 4])
        assert not set(shares[0]) & set(shares[1])                  # disjoint, same seeds as 1 process
    val = [list(EpochSampler(5, False, 0, rank=r, world_size=WORLD)) for r in range(WORLD)]
    assert sorted(i for share in val for i, _ in share) == list(range(5))    # every image once


def test_sync_batchnorm_on_cpu_matches_batchnorm_on_the_whole_batch(runs):
    root, _, _ = runs
    ranks = [torch.load(root / f"syncbn-{r}.pt") for r in range(WORLD)]
    assert ranks[0]["type"] == "CPUSyncBatchNorm2d"
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 5, 6, generator=g) * 3 + 1).requires_grad_(True)
    dy = torch.randn(4, 3, 5, 6, generator=g)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    y = bn(x)
    y.backward(dy)
    tol = dict(atol=1e-5, rtol=1e-5)                    # float32 vs float64 statistics
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), x.grad, **tol)
    # per-rank parameter grads; DDP averages them, the sum is the whole batch's
    torch.testing.assert_close(sum(r["dw"] for r in ranks), bn.weight.grad, **tol)
    torch.testing.assert_close(sum(r["db"] for r in ranks), bn.bias.grad, **tol)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean, **tol)
        torch.testing.assert_close(r["running_var"], bn.running_var, **tol)


def test_two_processes_match_one_process_at_the_same_global_batch(runs, tmp_path, monkeypatch):
    root, data, cfg = runs
    import models.fcn
    monkeypatch.setattr(models.fcn, "build", _no_dropout_model)
    steps, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)                # as the ranks; also much faster on a busy 2-core machine
    try:
        fit(tmp_path / "single", _inputs(data, cfg, "fcn32s"), device="cpu", log=QUIET,
            on_step=lambda it, n, loss: steps.append(float(loss)))
    finally:
        torch.set_num_threads(threads)
    ddp, single = root / "ddp-nodrop", tmp_path / "single"
    ddp_steps = json.loads((ddp / "steps-None.json").read_text())
    assert len(ddp_steps) == len(steps) == 3
    step_diffs = [abs(a - b) for a, b in zip(ddp_steps, steps)]
    diff_train = max(step_diffs)
    diff_valid = abs(_losses(ddp, "valid")[-1] - _losses(single, "valid")[-1])
    print(f"\n1 vs 2 processes: per-step train losses {['%.6f' % x for x in steps]} max |diff| "
          f"{diff_train:.1e}; final valid loss {_losses(single, 'valid')[-1]:.6f} |diff| {diff_valid:.1e}")
    # Same images and flips per step, SyncBatchNorm, no dropout: the runs differ only by float
    # summation order (BN statistics over 2 partial sums, gradient all-reduce, loss means).
    # Measured, 2 ranks vs 1 process: train steps 4.8e-7, 1.1e-6, 7.7e-6; valid 1.5e-4 (it. 2),
    # 1.7e-4 (it. 3).  A single process with 2 threads instead of 1: train <= 1.2e-6, valid 6e-5,
    # 7e-5.  With lr=0 (weights fixed, BN running stats still updated) the valid losses agree to
    # 5e-8, so the eval path is exact; the valid gap comes from the weights: Adam gives every
    # conv bias before a BN a ~lr step along its rounding-noise gradient (BN cancels the bias),
    # and the eval-mode running means follow them.  Longer runs diverge (this net on 12 photos
    # is chaotic: 1e-6 relative noise on the initial weights moves a step-3 loss by 1e-2), hence
    # 3 steps.  Per-rank BN statistics instead of SyncBatchNorm: 9e-2 at step 1, 1e-2..4e-2 on
    # valid -- far outside these tolerances (1e-4 train, 1e-3 valid).
    # Since the Lab shards hold L as uint8 (steps of 0.39; LabShard v5) flat areas of these
    # 32 px photos are exactly equal, so max-pool ties are broken by the summation-order
    # noise and route some gradients elsewhere: steps 2-3 then differ by up to 1.3e-3
    # (2.4e-6 with the int16 L before); the first step (no update yet) stays exact.
    assert step_diffs[0] < 1e-4
    assert diff_train < 5e-3
    assert diff_valid < 1e-3
    assert [r["iteration"] for r in _log(ddp)] == [r["iteration"] for r in _log(single)]
    assert [r["epoch"] for r in _log(ddp)] == [r["epoch"] for r in _log(single)]
    conf = json.loads((ddp / "config.json").read_text())
    assert conf["world_size"] == 2 and conf["cfg"]["batch_size"] == 4
    a = load_checkpoint(ddp / "checkpoint.pt")
    b = load_checkpoint(single / "checkpoint.pt")
    position = lambda c: (c["iteration"], c["epoch"], c["position"])  # noqa: E731
    assert position(a) == position(b) == (3, 0, 12)
    assert len(a["rng_ranks"]) == 2 and "rng_ranks" not in b
    # plain BN keys: loads into the plain model.  (Weights are not compared: Adam moves every
    # conv bias before a BN by ~lr per step in the direction of its rounding-noise gradient,
    # so these differ by up to 3 lr = 3e-3 between any two runs that round differently.)
    assert a["state_dict"].keys() == b["state_dict"].keys()


def test_rank0_writes_the_run_folder(runs):
    root, _, _ = runs
    run = root / "ddp-full"
    for name in ("checkpoint.pt", "best.pt", "log.csv", "config.json", "loss.png", "iou.png",
                 "done.json", "tiles/iter000003.jpg"):
        assert (run / name).is_file(), name
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1      # one writer: rank 0
    assert [(r["iteration"], r["split"]) for r in _log(run)] == [
        (str(i), s) for i in (2, 3) for s in ("train", "valid")]
    summary = json.loads((run / "done.json").read_text())
    assert summary["complete"] and summary["iterations"] == 3
    assert _log(run)[0]["epoch"] == "0"          # the iteration-2 checkpoint is mid-epoch (8 of 12)
    from models.colorizer import Colorizer
    assert Colorizer.from_checkpoint(load_checkpoint(run / "best.pt")).arch == "fcn32s"


def test_resume_under_ddp_matches_the_uninterrupted_run(runs):
    root, _, _ = runs
    full, resumed = root / "ddp-full", root / "ddp-resumed"
    assert json.loads((resumed / "config.json").read_text())["resumed_from"] == 2
    first = json.loads((resumed / "steps-2.json").read_text())
    then = json.loads((resumed / "steps-None.json").read_text())
    assert first + then == json.loads((full / "steps-None.json").read_text())   # steps 1-2, then 3
    assert [r["loss"] for r in _log(resumed)] == [r["loss"] for r in _log(full)]
    a = load_checkpoint(full / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    assert b["iteration"] == 3
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])   # bit for bit


def test_cli_on_a_run_folder_without_inputs_is_a_one_line_error(tmp_path, capsys):
    from train.distributed import main
    with pytest.raises(SystemExit) as e:
        main(["--run-dir", str(tmp_path / "run"), "--device", "cpu"])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "inputs.json does not exist" in lines[0] and "PrepareRun" in lines[0]


def test_torchrun_command_line_trains_the_luigi_run(work, photo_dataset):
    """The real launcher: `python -m torch.distributed.run --nproc_per_node 2 -m train.distributed`
    on the run folder Luigi prepared; the Luigi training task is then complete."""
    import tasks
    from conftest import build
    overrides = {"max_iteration": 2, "interval_validate": 2}
    ds = str(photo_dataset)
    t32 = tasks.TrainFCN32s(config=102, overrides=overrides, dataset=ds)
    build(t32.requires()["inputs"])
    assert not t32.complete()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "train.distributed", "--run-dir", str(t32.run_dir()), "--device", "cpu",
           "--loader-workers", "0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 process(es) (gloo, cpu)" in proc.stdout
    luigi_cache_cleared = tasks.TrainFCN32s(config=102, overrides=overrides, dataset=ds)
    assert luigi_cache_cleared.complete()                # done.json + best.pt: Luigi will not retrain it
    done = json.loads((t32.run_dir() / "done.json").read_text())
    assert done["complete"] and done["iterations"] == 2
    conf = json.loads((t32.run_dir() / "config.json").read_text())
    assert conf["world_size"] == 2 and conf["data"]["n_train"] == 12
    assert [r["split"] for r in _log(t32.run_dir())] == ["train", "valid"]


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_iteration(runs):
    root, _, _ = runs
    run, full = root / "ddp-signal", root / "ddp-full"
    assert [(run / f"stopped-rank{r}.txt").read_text() for r in range(WORLD)] == ["2", "2"]
    stopped = json.loads((run / "steps-signal.json").read_text())
    then = json.loads((run / "steps-resumed.json").read_text())
    assert len(stopped) == 2 and len(then) == 1
    assert stopped + then == json.loads((full / "steps-None.json").read_text())   # same trajectory
    assert json.loads((run / "config.json").read_text())["resumed_from"] == 2
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["iteration"] == 3 and not (run / "checkpoint.prev.pt").exists()
    a = load_checkpoint(full / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], ckpt["state_dict"][k]) for k in a)        # bit for bit
    train_row = [r for r in _log(run) if r["split"] == "train"]
    assert [r["iteration"] for r in train_row] == ["3"]                     # steps 1-3, summed over
    assert float(train_row[0]["loss"]) == pytest.approx(np.mean(stopped + then), rel=1e-6)   # the stop
