"""pipeline/memory.py's training-step estimate next to the measured peak RSS of real CPU steps.

Each point runs in a fresh process (so one point's peak cannot hide another's): it imports
torch, builds the FCN with models.registry, the optimiser with train.steps.make_optimizer,
and runs --steps steps of train.steps.train_one_epoch (what fit runs between validations)
on random lightness and softmax targets made as they are consumed (the loader's batches
are loader_bytes, apart); its peak is resource.getrusage's ru_maxrss.  The
estimate is pipeline.memory.training_step_bytes for the same settings on 'cpu'.  torch
runs on 1 thread (as bench/train_step.py: this machine has 2 shared cores).

value = the largest |estimate / measured - 1| over the points; goal <= 0.25.

    .venv/bin/python bench/memory_estimate.py [--steps 2] [--quick]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import resolve_config  # noqa: E402
from pipeline.memory import training_step_bytes  # noqa: E402

# (arch, im_size, width, batch_size, n_clusters, img_lowpass, optim): small widths, 2-3 sizes
POINTS = [
    ("fcn32s", 64, 1 / 8, 4, 16, 8, "adam"),        # small: torch's own memory dominates
    ("fcn32s", 160, 1 / 4, 4, 16, 8, "adam"),
    ("fcn32s", 256, 1 / 4, 8, 16, 8, "adam"),       # the trunk's activations dominate
    ("fcn8s", 256, 1 / 16, 4, 256, 1, "adam"),      # the loss's K x S x S maps dominate
    ("fcn16s", 128, 1 / 2, 2, 64, 4, "sgd"),
    ("fcn32s", 32, 1.0, 1, 16, 8, "adam"),          # weights + gradients + Adam state dominate
]
QUICK = POINTS[:2]

STEP = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from models.registry import build_network
from train.steps import TrainState, make_optimizer, train_one_epoch
from train.metrics import ConfusionMeter
cfg = {cfg!r}
torch.manual_seed(0)
net = build_network({arch!r}, cfg["n_clusters"], cfg["width"])
opt = make_optimizer(net, cfg)
cpu = torch.device("cpu")
state = TrainState(meter=ConfusionMeter(cfg["n_clusters"], cpu), kl_reduction=cfg["kl_reduction"])
s, k, n, t = cfg["im_size"], cfg["n_clusters"], cfg["batch_size"], cfg["im_size"] // cfg["img_lowpass"]
batches = ((torch.rand(n, 1, s, s) * 100, torch.softmax(torch.randn(n, k, t, t), 1)) for _ in range({steps}))
train_one_epoch(net, batches, opt, cpu, state, {steps})
assert state.iteration == {steps}
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def measure(point, steps):
    arch, im_size, width, batch, k, lowpass, optim = point
    cfg = resolve_config(102, {"im_size": im_size, "width": width, "batch_size": batch, "n_clusters": k,
                               "img_lowpass": lowpass, "optim": optim, "momentum": 0.9})
    code = STEP.format(repo=str(REPO), cfg=cfg, arch=arch, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return cfg, int(out.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="two points only (for tests)")
    args = ap.parse_args()
    rows = []
    for point in QUICK if args.quick else POINTS:
        cfg, peak = measure(point, args.steps)
        estimate = training_step_bytes(cfg, point[0], "cpu")
        rows.append({"arch": point[0], "im_size": point[1], "width": point[2], "batch": point[3], "K": point[4],
                     "lowpass": point[5], "optim": point[6], "measured_mb": round(peak / 2 ** 20),
                     "estimate_mb": round(estimate / 2 ** 20), "ratio": round(estimate / peak, 3)})
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), file=sys.stderr, flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(json.dumps({"bench": "memory_estimate", "value": round(worst, 3), "unit": "max |estimate/measured - 1|",
                      "goal": 0.25, "goal_op": "<=", "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
