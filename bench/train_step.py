"""Trainer overhead: train.steps.train_one_epoch vs a bare PyTorch loop, same model and data.

Setup: a small FCN-32s (width 1/8, K=16) on 64x64 inputs, batch 4; Lab + label shards
built from generated ImageNet-like JPEGs (im_size 64, low-pass 8 -> 8x8 targets).

  ours  train_one_epoch(model, make_loader(ShardDataset(...), workers=0), Adam, ...): what
        fit() runs between validations (HDF5 reads, flips, collation, train-mode switch,
        KL loss with argmax labels, confusion matrix, the loss read back every LOG_EVERY steps).
  bare  for x, t in preloaded_batches: loss = kl_loss(model(x), t); zero_grad; backward;
        step -- same batches (read once from the same dataset, same order), same loss,
        same model init (a deep copy), same Adam settings.

Neither side validates or checkpoints.  Interleaved step by step: train_one_epoch's on_step
callback runs one bare step on the same batch after each of ours (so ours keeps its loader
iterator, as in fit), and times both.  value = (median ours step / median bare step - 1)
* 100; goal <= 5 %.  Also: the median of per-step paired ratios, the same on process CPU
time, and the per-step
cost of ours' extra work measured alone (loader batch, argmax labels + confusion
matrix) as a fraction of the bare step.  fit()'s own images/s (validation time excluded by fit) is reported as an
extra with --fit.

host_reads_per_step: calls that move a tensor value to Python (.item(), .tolist(), .cpu(),
.numpy(), float(t), int(t), bool(t), format(t), np.asarray(t)) made by the project's code
during ours' timed steps, per step; goal <= 0.1 at fit's default log interval (a read-back
every train.steps.LOG_EVERY = 10 steps).  Each one is a host sync on a GPU.  Not counted: torch's
own internals (e.g. Adam reading its CPU step counters, which never wait for the GPU), the
loader's host-side batch preparation (train/data.py: its tensors are on the host before
they go to the device) and this script's bare side.

torch threads: default 1.  On this shared 2-core machine torch's default (2 intra-op
threads) makes every op an OpenMP parallel region that waits for a descheduled thread:
steps got ~7x slower (1.8 s vs 0.24 s) and the A/B noise (+-15 %) swamped a 5 % goal.
Use --threads 0 on a quiet machine to measure with torch's default.

    .venv/bin/python bench/train_step.py [--pairs 100] [--threads 1] [--fit]
"""
import argparse
import contextlib
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models.colorizer import Colorizer  # noqa: E402
from pipeline.run_inputs import RunInputs  # noqa: E402
from pipeline.splits import list_split  # noqa: E402
from pipeline.synthetic import generate_imagenet_like  # noqa: E402
from pipeline.gmm import fit_gmm  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness  # noqa: E402
from train.data import ShardDataset, make_loader  # noqa: E402
from train.steps import LOG_EVERY, TrainState, make_optimizer, train_one_epoch  # noqa: E402
from train.loss import kl_loss  # noqa: E402
from train.metrics import ConfusionMeter  # noqa: E402


HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__format__", "__array__")
NOT_COUNTED = (str(REPO / "bench"), str(REPO / "train" / "data.py"))


@contextlib.contextmanager
def counting_host_reads(counter: dict):
    """While counter["on"], count in counter["n"] the HOST_READS calls on tensors made from the
    project's own files (the caller's frame), but NOT_COUNTED; see the module docstring."""
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(method):
        def read(self, *args, **kwargs):
            if counter["on"]:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(str(REPO)) and not caller.startswith(NOT_COUNTED):
                    counter["n"] += 1
            return method(self, *args, **kwargs)
        return read
    for name, method in originals.items():
        setattr(torch.Tensor, name, counted(method))
    try:
        yield counter
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def build_shards(tmp, n, im_size, k, lowpass, per_shard=32):
    data = tmp / "data"
    generate_imagenet_like(data, n, seed=2, val_fraction=0.0)
    relpaths = list_split(data, "train")
    labs = []
    for c in range(0, len(relpaths), per_shard):
        p = tmp / f"lab-{c}.h5"
        build_lab_shard(data, relpaths[c:c + per_shard], im_size, p, sig=f"lab{c}")
        labs.append(p)
    gmm = fit_gmm(gmm_features(labs, 5000, 20, 1000, 0), k, 0)
    pairs = []
    for p in labs:
        q = p.with_name(p.name.replace("lab-", "labels-"))
        build_label_shard(p, gmm, lowpass, q, sig=q.stem)
        pairs.append((str(p), str(q)))
    return pairs, mean_lightness(labs, 10_000), gmm


def components(loader, state, args, batches, reps=20):
    """Ours' per-step extras measured alone (ms): a batch from the loader, the confusion
    matrix update (argmax of target and scores + bincount)."""
    it_times = []
    for _ in range(max(1, reps // args.steps)):
        loader.sampler.set_epoch(0)
        t0 = time.perf_counter()
        k = 0
        for _x, _t in loader:
            k += 1
        it_times.append((time.perf_counter() - t0) / k)
    x, target = batches[0]
    scores = torch.randn(x.shape[0], args.k, x.shape[2], x.shape[3])
    meter = state.meter
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        labels = torch.nn.functional.interpolate(target, size=x.shape[-2:], mode="bilinear",
                                                 align_corners=False).argmax(1)
        meter.update(scores, labels)
        ts.append(time.perf_counter() - t0)
    meter_s = statistics.median(ts)
    return {"loader_ms_per_batch": round(statistics.median(it_times) * 1e3, 3),
            "labels_meter_ms_per_step": round(meter_s * 1e3, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=100, help="timed (ours, bare) step pairs")
    ap.add_argument("--warmup", type=int, default=4, help="untimed pairs first")
    ap.add_argument("--steps", type=int, default=4, help="steps per epoch (images = steps * batch)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--im-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=1 / 8)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1; 0 = torch's default, see the docstring)")
    ap.add_argument("--fit", action="store_true", help="also run fit() for an images/s figure")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = {"max_iteration": 10 ** 9, "optim": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.8}
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    try:
        n = args.steps * args.batch
        pairs, mean_L, gmm = build_shards(tmp, n, args.im_size, args.k, args.lowpass)
        dataset = ShardDataset(pairs, flip=True)
        assert len(dataset) == n, f"{len(dataset)} images kept of {n}"
        loader = make_loader(dataset, args.batch, shuffle=True, workers=0, seed=0, drop_last=True)

        model_ours = Colorizer("fcn32s", args.k, args.width, args.im_size, mean_L, gmm)
        model_bare = copy.deepcopy(model_ours)
        opt_ours, opt_bare = make_optimizer(model_ours, cfg), make_optimizer(model_bare, cfg)
        state = TrainState(meter=ConfusionMeter(args.k, device))
        total = args.warmup + args.pairs
        n_epochs = -(-total // args.steps)
        # the very batches ours will see, epoch by epoch (same order and flips), preloaded
        batches = []
        for e in range(n_epochs):
            loader.sampler.set_epoch(e)
            batches += [(x.clone(), t.clone()) for x, t in loader]
        model_bare.train()
        times = {"ours": [], "bare": [], "ours_cpu": [], "bare_cpu": []}
        mark = {}
        reads = {"on": False, "n": 0}

        def bare_step(i):
            x, target = batches[i]
            loss = kl_loss(model_bare(x), target)
            opt_bare.zero_grad(set_to_none=True)
            loss.backward()
            opt_bare.step()
            return loss.item()

        def on_step(iteration, max_iteration, loss):
            # ours' step `iteration` just ended: from the end of the previous bare step to here
            # (next batch from the loader, forward, loss, backward, step, meter, read-backs).
            t, c = time.perf_counter(), time.process_time()
            reads["on"] = False                                # the bare step is not counted
            times["ours"].append(t - mark["t"])
            times["ours_cpu"].append(c - mark["c"])
            bare_step(iteration - 1)                           # the same batch, bare
            mark["t"], mark["c"] = time.perf_counter(), time.process_time()
            times["bare"].append(mark["t"] - t)
            times["bare_cpu"].append(mark["c"] - c)
            reads["on"] = iteration >= args.warmup             # ours' next step is timed: count
            if iteration >= total:
                state.stop = True

        mark["t"], mark["c"] = time.perf_counter(), time.process_time()
        reads["on"] = args.warmup == 0
        with counting_host_reads(reads):
            while not state.stop:
                loader.sampler.set_epoch(state.epoch, start=state.position)
                train_one_epoch(model_ours, loader, opt_ours, device, state, cfg["max_iteration"], on_step)
                mark["t"], mark["c"] = time.perf_counter(), time.process_time()   # epoch switch: not a step
        for k in times:
            times[k] = times[k][args.warmup:]
        med = {k: statistics.median(v) for k, v in times.items()}
        paired = [o / b - 1 for o, b in zip(times["ours"], times["bare"])]
        paired_cpu = [o / b - 1 for o, b in zip(times["ours_cpu"], times["bare_cpu"])]
        result = {"bench": "train_step", "value": round((med["ours"] / med["bare"] - 1) * 100, 2),
                  "unit": "% overhead (median ours step / median bare step - 1)",
                  "goal": 5, "goal_op": "<=",
                  "ours_ms_per_step": round(med["ours"] * 1e3, 2), "bare_ms_per_step": round(med["bare"] * 1e3, 2),
                  "paired_median_pct": round(statistics.median(paired) * 100, 2),
                  "cpu_paired_median_pct": round(statistics.median(paired_cpu) * 100, 2),
                  "ours_cpu_ms_per_step": round(med["ours_cpu"] * 1e3, 2),
                  "bare_cpu_ms_per_step": round(med["bare_cpu"] * 1e3, 2),
                  "host_reads_per_step": round(reads["n"] / args.pairs, 3), "host_reads_goal": 0.1,
                  "log_every": LOG_EVERY,
                  "pairs": len(paired), "warmup": args.warmup, "batch": args.batch,
                  "im_size": args.im_size, "width": args.width, "k": args.k,
                  "torch_threads": torch.get_num_threads()}
        result.update(components(loader, state, args, batches))
        extra = result["loader_ms_per_batch"] + result["labels_meter_ms_per_step"]
        result["components_overhead_pct"] = round(extra / result["bare_ms_per_step"] * 100, 2)
        if args.fit:
            from pipeline.config import DEFAULTS
            from train.fit import fit
            fcfg = {**DEFAULTS, **cfg, "width": args.width, "batch_size": args.batch,
                    "max_iteration": 4 * len(batches), "interval_validate": 4 * len(batches),
                    "n_clusters": args.k, "im_size": args.im_size}
            inputs = RunInputs(arch="fcn32s", cfg=fcfg, train=pairs, val=pairs[:1], mean_L=mean_L,
                               gmm={k: v.tolist() for k, v in gmm.items()})
            res = fit(tmp / "run", inputs, device="cpu", loader_workers=0, log=lambda *a: None)
            result["fit_images_per_s"] = round(res["images_per_s"], 2)
            result["fit_ms_per_step"] = round(args.batch / res["images_per_s"] * 1e3, 2)
        result["seconds"] = round(time.perf_counter() - t_start, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
