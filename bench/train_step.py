"""Trainer overhead: train.loop.train_one_epoch vs a bare PyTorch loop, same model and data.

Setup: a small FCN-32s (width 1/8, K=16) on 64x64 inputs, batch 4; Lab + label shards
built from generated ImageNet-like JPEGs (im_size 64, low-pass 8 -> 8x8 targets).

  ours  train_one_epoch(model, make_loader(ShardDataset(...), workers=0), Adam, ...): what
        fit() runs between validations (HDF5 reads, flips, collation, train-mode switch,
        KL loss with argmax labels, loss.item(), confusion matrix).
  bare  for x, t in preloaded_batches: loss = kl_loss(model(x), t); zero_grad; backward;
        step -- same batches (read once from the same dataset, same order), same loss,
        same model init (a deep copy), same Adam settings.

Neither side validates or checkpoints.  Rounds alternate the order; each round times one
epoch (= --steps steps) of each.  value = (median ours step / median bare step - 1) * 100;
goal <= 5 %.  fit()'s own images/s (validation time excluded by fit) is reported as an
extra with --fit.

    .venv/bin/python bench/train_step.py [--rounds 15] [--steps 16] [--fit]
"""
import argparse
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.fcn import build_model  # noqa: E402
from pipeline.datasets import generate_imagenet_like, list_split  # noqa: E402
from pipeline.gmm import fit_gmm  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness  # noqa: E402
from train.data import ShardDataset, make_loader  # noqa: E402
from train.loop import kl_loss, make_optimizer, new_train_state, train_one_epoch  # noqa: E402


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=16, help="steps per round (one epoch; n = steps*batch)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--im-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=1 / 8)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lowpass", type=int, default=8)
    ap.add_argument("--fit", action="store_true", help="also run fit() for an images/s figure")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    device = torch.device("cpu")
    cfg = {"max_iteration": 10 ** 9, "optim": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.8}
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    try:
        n = args.steps * args.batch
        pairs, mean_L, gmm = build_shards(tmp, n, args.im_size, args.k, args.lowpass)
        dataset = ShardDataset(pairs, mean_L, flip=True)
        assert len(dataset) == n, f"{len(dataset)} images kept of {n}"
        loader = make_loader(dataset, args.batch, shuffle=True, workers=0, seed=0, drop_last=True)

        model_ours = build_model("fcn32s", args.k, args.width)
        model_bare = copy.deepcopy(model_ours)
        opt_ours, opt_bare = make_optimizer(model_ours, cfg), make_optimizer(model_bare, cfg)
        state = new_train_state(args.k, device)
        # the same batches, read once through the same loader (epoch 0 order and flips)
        loader.sampler.set_epoch(0)
        batches = [(x.clone(), t.clone()) for x, t in loader]
        model_bare.train()

        def ours():
            loader.sampler.set_epoch(state["epoch"], start=state["position"])
            t0 = time.perf_counter()
            steps = train_one_epoch(model_ours, loader, opt_ours, device, state, cfg)
            return (time.perf_counter() - t0) / steps

        def bare():
            t0 = time.perf_counter()
            for x, target in batches:
                loss = kl_loss(model_bare(x), target)
                opt_bare.zero_grad(set_to_none=True)
                loss.backward()
                opt_bare.step()
            loss.item()
            return (time.perf_counter() - t0) / len(batches)

        ours(), bare()                                     # warm-up round, not counted
        times = {"ours": [], "bare": []}
        for r in range(args.rounds):
            for name, fn in ((("ours", ours), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("ours", ours))):
                times[name].append(fn())
        m_ours, m_bare = statistics.median(times["ours"]), statistics.median(times["bare"])
        # paired per-round overheads (robust to drifting machine load)
        paired = [o / b - 1 for o, b in zip(times["ours"], times["bare"])]
        result = {"bench": "train_step", "value": round((m_ours / m_bare - 1) * 100, 2), "unit": "% overhead",
                  "goal": 5, "goal_op": "<=",
                  "ours_ms_per_step": round(m_ours * 1e3, 2), "bare_ms_per_step": round(m_bare * 1e3, 2),
                  "paired_median_overhead_pct": round(statistics.median(paired) * 100, 2),
                  "rounds": args.rounds, "steps_per_round": len(batches), "batch": args.batch,
                  "im_size": args.im_size, "width": args.width, "k": args.k,
                  "torch_threads": torch.get_num_threads()}
        if args.fit:
            from train.loop import fit
            fcfg = {**__import__("pipeline.config", fromlist=["DEFAULTS"]).DEFAULTS, **cfg,
                    "width": args.width, "batch_size": args.batch, "max_iteration": 4 * len(batches),
                    "interval_validate": 4 * len(batches), "n_clusters": args.k, "im_size": args.im_size}
            res = fit(tmp / "run", fcfg, "fcn32s", {"train": pairs, "val": pairs[:1], "mean_L": mean_L,
                                                     "gmm": gmm, "n_clusters": args.k},
                      device="cpu", loader_workers=0, log=lambda *a: None)
            result["fit_images_per_s"] = round(res["images_per_s"], 2)
            result["fit_ms_per_step"] = round(args.batch / res["images_per_s"] * 1e3, 2)
        result["seconds"] = round(time.perf_counter() - t_start, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
