"""GPU training throughput of FCN-32s / FCN-16s at config 14's size, fed by the real loader.

One row per combination of --archs x --batches x --precisions x --formats x --workers
(config 14: width 1, 256 px, K=16, low-pass 8 targets, Adam; batch 1 is config 14's own):

  img/s       batch * timed steps / summed step time
  step ms     median step time
  data wait   time blocked in next(loader iterator) / step time, summed over the timed steps
  peak GiB    torch.cuda.max_memory_allocated over the combination (model, Adam, activations)
  first s     the first step alone (cuDNN autotuning; torch.compile with --compile)

Data: generated ImageNet-like JPEGs made into Lab + label shards at start, in a temp dir,
with the pipeline's own writers (as LabelsFor does), read through train.data.ShardDataset
and make_loader with loader worker processes and pinned memory, as fit() does.  The
shard list is repeated so that no epoch ends inside a combination.  The shards sit in
the page cache: reads from a real disk or network file system can only add data wait.

A step is train.steps.train_one_epoch's own, with the combination as the config keys
precision and channels_last: batch to the device, forward under autocast (bf16) or not
(fp32), kl_loss with argmax labels, zero_grad, backward, Adam step, confusion matrix update
on the device, the loss read back every LOG_EVERY steps -- then torch.cuda.synchronize (the
bench's, for per-step times: fit itself does not wait for the GPU between read-backs).
fp32 means no autocast; cuDNN may still use TF32 for convolutions (torch's default,
reported as cudnn_tf32).  fit() runs bf16 + channels_last on CUDA by default ('auto').
--smoke runs both precisions, channels_last, on whatever device there is (the CPU too).

Warm-up steps are not timed: --warmup, plus one per batch the workers hold ready (2 per
worker, the DataLoader default), so that timing starts after the queue filled during
the slow first steps has drained.  Combinations matching the headline run first, and no
new combination starts after --max-seconds.

Last line of stdout: {"bench": "gpu_train", "value": img/s of fcn16s, batch 32, bf16,
channels_last (the first --workers value), "unit": "img/s", "goal": 800, ...}.
Without CUDA (and without --smoke) it measures nothing: one line on stderr, value null,
exit 0.  --smoke: a seconds-long run of every code path at a tiny size (CPU or GPU).

    .venv/bin/python bench/gpu_train.py               # H200: ~3-5 min, see bench/README.md
    .venv/bin/python bench/gpu_train.py --smoke       # any machine, seconds
"""
import argparse
import itertools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch loads)
import torch  # noqa: E402

from models.colorizer import Colorizer  # noqa: E402
from pipeline.config import resolve_config  # noqa: E402
from pipeline.splits import list_split  # noqa: E402
from pipeline.synthetic import generate_imagenet_like  # noqa: E402
from pipeline.gmm import fit_gmm  # noqa: E402
from pipeline.preprocess import build_label_shard, build_lab_shard, gmm_features, mean_lightness  # noqa: E402
from train.data import ShardDataset, make_loader  # noqa: E402
from train.metrics import ConfusionMeter  # noqa: E402
from train.steps import TrainState, make_optimizer, train_one_epoch  # noqa: E402

CONFIG = 14                 # experiment config whose sizes and optimiser are measured
GOAL = 800                  # img/s for the headline combination on one H200
HEADLINE = {"arch": "fcn16s", "precision": "bf16", "format": "channels_last"}  # at the largest batch
PREFETCH = 2                # batches each loader worker holds ready (DataLoader default)
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
SMOKE = dict(               # --smoke: every code path in seconds
    overrides=dict(im_size=32, width=1 / 16, shard_size=4),   # tiny net on 32 px, 2 shards
    n_images=8, batches=[2], steps=2, warmup=1, workers=[1])


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", nargs="+", choices=["fcn32s", "fcn16s", "fcn8s"], default=["fcn32s", "fcn16s"],
                    help="networks (configs 14 and 15)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32],
                    help="images per step (1: config 14; 32: the GPU target)")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                    help="fp32: no autocast; bf16: bf16 autocast, as fit() on CUDA")
    ap.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=["channels_last"],
                    help="memory format of model and input (fit() uses channels_last on CUDA)")
    ap.add_argument("--workers", nargs="+", type=int, default=[8, 2],
                    help="loader worker processes (8: half the H200 host's cores; 2: luigi.cfg's default)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compile time is "
                    "in the first step, reported as first_step_s)")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per combination")
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed steps first (plus 2 per loader worker, see the docstring)")
    ap.add_argument("--n-images", type=int, default=512,
                    help="distinct generated images (2 shards of config 14's 256)")
    ap.add_argument("--max-seconds", type=float, default=420,
                    help="start no new combination after this many seconds (the H200 run fits in ~8 min)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU/GPU run of every code path, seconds")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    args.overrides = {}                                   # config 14 as it is, except with --smoke
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def build_shards(tmp, cfg, n_images):
    """Generated JPEGs -> Lab + label shards, as PrepareRun builds them (cfg's im_size,
    shard_size, GMM sampling, K, low-pass).  Returns ([(lab, label), ...], mean_L, gmm)."""
    data = tmp / "data"
    generate_imagenet_like(data, n_images, seed=0, val_fraction=0.0)
    relpaths = list_split(data, "train")
    size = int(cfg["shard_size"])
    labs = []
    for start in range(0, len(relpaths), size):
        path = tmp / f"lab-{start:06d}.h5"
        build_lab_shard(data, relpaths[start:start + size], cfg["im_size"], path, sig=path.stem)
        labs.append(path)
    features = gmm_features(labs, cfg["gmm_images"], cfg["gmm_pixels"], cfg["gmm_pixels_few"], cfg["gmm_seed"])
    gmm = fit_gmm(features, cfg["n_clusters"], cfg["gmm_seed"])
    pairs = []
    for lab in labs:
        label = lab.with_name(lab.name.replace("lab-", "labels-"))
        build_label_shard(lab, gmm, cfg["img_lowpass"], label, sig=label.stem)
        pairs.append((lab, label))
    return pairs, mean_lightness(labs, cfg["mean_pixels"]), gmm


def timed_batches(pairs, cfg, batch, workers, n_steps, pin_memory):
    """A loader iterator over at least n_steps batches (the shard list repeated so that
    no epoch boundary falls inside), and the dataset to close afterwards."""
    n_unique = len(ShardDataset(pairs, flip=False))
    repeats = math.ceil(n_steps * batch / n_unique)
    dataset = ShardDataset(pairs * repeats, flip=bool(cfg["flip"]))
    loader = make_loader(dataset, batch, shuffle=True, workers=workers, seed=cfg["seed"],
                         pin_memory=pin_memory, drop_last=True)
    return iter(loader), dataset


# ----------------------------------------------------------------------------- one combination
def bf16_works(device):
    """bf16 autocast runs a convolution on this device (older CPUs may lack the kernels)."""
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4, device=device),
                                       torch.ones(1, 1, 3, 3, device=device))
        return True
    except RuntimeError:
        return False


class _TimedIterator:
    """The loader iterator, timing each next(): the data wait."""

    def __init__(self, iterator):
        self.iterator, self.waits = iterator, []

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        batch = next(self.iterator)
        self.waits.append(time.perf_counter() - t0)
        return batch


def run_combination(combo, pairs, mean_L, gmm, cfg, args, device):
    """Train `combo` for warm-up + timed steps with the trainer's own step
    (train.steps.train_one_epoch); return its table row (a dict)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    warmup = args.warmup + PREFETCH * combo["workers"]   # drain the queue filled during step 1
    n = warmup + args.steps
    batches, dataset = timed_batches(pairs, cfg, combo["batch"], combo["workers"], n, pin_memory=cuda)
    batches = _TimedIterator(batches)
    torch.manual_seed(int(cfg["seed"]))
    model = Colorizer(combo["arch"], int(cfg["n_clusters"]), cfg["width"], cfg["im_size"], mean_L, gmm)
    channels_last = "on" if combo["format"] == "channels_last" else "off"
    model = model.to(device, memory_format=FORMATS[combo["format"]])
    forward = torch.compile(model) if args.compile else model
    optimizer = make_optimizer(model, cfg)
    state = TrainState(meter=ConfusionMeter(int(cfg["n_clusters"]), device), kl_reduction=cfg["kl_reduction"],
                       precision=combo["precision"], channels_last=channels_last)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    ends = [time.perf_counter()]

    def on_step(iteration, max_iteration, loss):
        sync()                     # the bench's, for per-step times (fit reads back every LOG_EVERY steps)
        ends.append(time.perf_counter())
    train_one_epoch(forward, batches, optimizer, device, state, n, on_step)
    dataset.close()
    steps = [b - a for a, b in zip(ends, ends[1:])][warmup:]
    waits = batches.waits[warmup:len(ends) - 1]
    return {**combo, "compile": args.compile,
            "img_per_s": round(combo["batch"] * len(steps) / sum(steps), 2),
            "step_ms": round(statistics.median(steps) * 1e3, 2),
            "data_wait_frac": round(sum(waits) / sum(steps), 6),
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if cuda else None,
            "first_step_s": round(ends[1] - ends[0], 2), "loss": round(state.window_loss, 4),
            "warmup": warmup, "steps": len(steps)}


def is_headline(combo, largest_batch):
    return all(combo[k] == v for k, v in HEADLINE.items()) and combo["batch"] == largest_batch


KEYS = ("arch", "batch", "precision", "format", "workers")   # what a combination varies


def combinations(args):
    """Every combination in table order (itertools.product of the options)."""
    return [dict(zip(KEYS, values)) for values in
            itertools.product(args.archs, args.batches, args.precisions, args.formats, args.workers)]


# ----------------------------------------------------------------------------- report
COLUMNS = [("arch", "{}"), ("batch", "{}"), ("precision", "{}"), ("format", "{}"), ("workers", "{}"),
           ("img_per_s", "{:.1f}"), ("step_ms", "{:.1f}"), ("data_wait_frac", "{:.1%}"),
           ("peak_gib", "{:.2f}"), ("first_step_s", "{:.1f}"), ("loss", "{:.3f}")]


def print_table(rows):
    cells = [[name for name, _ in COLUMNS]]
    cells += [["-" if row[name] is None else fmt.format(row[name]) for name, fmt in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def headline_value(rows, largest_batch):
    """(img/s, description) of the first headline row run (the first --workers value)."""
    hits = [r for r in rows if is_headline(r, largest_batch)]
    if not hits:
        return None, "headline combination not run"
    return hits[0]["img_per_s"], "{arch} batch {batch} {precision} {format} workers {workers}".format(**hits[0])


def main():
    args = parse_args()
    t_start = time.perf_counter()
    result = {"bench": "gpu_train", "value": None, "unit": "img/s", "goal": GOAL, "goal_op": ">=",
              "config": CONFIG, "smoke": args.smoke}
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        log("gpu_train: no CUDA device here, nothing measured (value null); run it on a GPU "
            "machine, or with --smoke for a quick CPU check of the code")
        print(json.dumps({**result, "note": "no CUDA device"}))
        return
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True               # as fit() does
    cfg = resolve_config(CONFIG, args.overrides)
    table_order = [tuple(c.values()) for c in combinations(args)]
    # the headline combinations first, so that --max-seconds never drops them
    combos = sorted(combinations(args), key=lambda c: not is_headline(c, max(args.batches)))
    skipped = []
    if "bf16" in args.precisions and not bf16_works(device):
        skipped += [dict(c, why="bf16 autocast unsupported") for c in combos if c["precision"] == "bf16"]
        combos = [c for c in combos if c["precision"] != "bf16"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-train-"))
    rows = []
    try:
        log(f"gpu_train: building {args.n_images} images of shards at {cfg['im_size']} px ...")
        pairs, mean_L, gmm = build_shards(tmp, cfg, args.n_images)
        shard_s = time.perf_counter() - t_start
        log(f"gpu_train: shards ready in {shard_s:.1f} s; {len(combos)} combinations on {device}")
        for combo in combos:
            if time.perf_counter() - t_start > args.max_seconds:
                skipped.append(dict(combo, why=f"--max-seconds {args.max_seconds:g} reached"))
                continue
            rows.append(run_combination(combo, pairs, mean_L, gmm, cfg, args, device))
            log("gpu_train: " + json.dumps(rows[-1]))
            if cuda:
                torch.cuda.empty_cache()                     # the next combination's peak is its own
            if args.compile:
                torch._dynamo.reset()                        # a fresh model: no stale guards or cache limit
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(sorted(rows, key=lambda r: table_order.index(tuple(r[k] for k in KEYS))))
    for s in skipped:
        print(f"skipped: {s}")
    value, value_of = headline_value(rows, max(args.batches))
    result.update(value=value, value_of=value_of, rows=rows, skipped=skipped,
                  device=torch.cuda.get_device_name(device) if cuda else "cpu", torch=torch.__version__,
                  cudnn_tf32=torch.backends.cudnn.allow_tf32, compile=args.compile,
                  im_size=cfg["im_size"], width=cfg["width"], k=cfg["n_clusters"], lowpass=cfg["img_lowpass"],
                  n_images=args.n_images, shard_seconds=round(shard_s, 1),
                  seconds=round(time.perf_counter() - t_start, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
