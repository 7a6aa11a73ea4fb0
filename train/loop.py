"""Iteration-based FCN training: train_one_epoch / evaluate / fit.

fit() runs cfg["max_iteration"] optimiser steps.  Every cfg["interval_validate"]
steps, and at the last step, it evaluates on the WHOLE validation split and
writes, in this order: two log.csv rows, TensorBoard scalars, a tile image,
best.pt (when the validation loss is the lowest so far), checkpoint.pt.
Rerunning fit on a run_dir holding checkpoint.pt resumes from it: model,
optimiser, iteration, epoch and position inside it, best loss and every RNG
are restored, log rows written after the checkpoint are dropped, and the run
ends at the same weights an uninterrupted run reaches (on CPU).

Distributed (fit(..., distributed=True) inside an initialised torch.distributed process
group, see train/distributed.py): cfg["batch_size"] is the GLOBAL batch, split evenly over
the ranks; BatchNorm becomes SyncBatchNorm and the model is wrapped in
DistributedDataParallel; per-step losses and the train confusion matrix are all-reduced;
every rank evaluates its share of the validation split and the loss sums and confusion
matrices are all-reduced; rank 0 alone writes the run folder.  `iteration`, `epoch` and
`position` (images of the epoch consumed by all ranks together) mean what they mean in a
single process, so a checkpoint resumes with any number of ranks.

Run folder:
  config.json        resolved cfg, arch, data sizes, git revision + dirty flag
  log.csv            LOG_COLUMNS, see below
  checkpoint.pt      latest validation: everything needed to resume
  best.pt            lowest validation loss so far: model + settings (an init_checkpoint)
  tb/                TensorBoard events
  tiles/iterNNNNNN.jpg   colour | target clusters | gray | predicted clusters | decoded colour
  loss.png, iou.png  curves from log.csv (written at the end)
  summary.json       the dict fit returns, once max_iteration is reached

log.csv columns (fixed, one 'train' and one 'valid' row per validation):
  iteration  optimiser steps done
  epoch      0-based index of the pass over the training set in progress
  split      'train': averaged over the steps since the previous validation (loss =
             mean of the per-step objective, incl. class weights if any; scores from
             the confusion matrix of those steps, in train mode: dropout on).
             'valid': the whole validation split in eval mode; loss = plain KL.
  loss       KL(target || softmax(scores)), summed over K, mean over pixels and images
  acc, acc_cls, mean_iu, fwavacc   argmax-cluster scores (train.metrics)
  lr         learning rate of the first parameter group
  elapsed_s  wall-clock seconds since the run started, summed over resumed sessions
"""
import contextlib
import csv
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import remove_stale_temporaries, write_text_atomic

from .checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from .data import ShardDataset, make_loader
from .metrics import ConfusionMeter

LOG_COLUMNS = ("iteration", "epoch", "split", "loss", "acc", "acc_cls", "mean_iu", "fwavacc",
               "lr", "elapsed_s")
# cfg keys that may change between a run and its resumption (extend / re-space a run);
# any other difference means a different experiment and is refused.
RESUMABLE_CHANGES = ("max_iteration", "interval_validate", "config", "init_config")
N_VISUAL = 4  # validation images drawn in each tile image


# ----------------------------------------------------------------------------- loss
def upsample_targets(target, size):
    """(N, K, s, s) posteriors -> (N, K, H, W), bilinear, align_corners=False.

    Targets travel to the device at the stored (low) target resolution and are
    upsampled there, to the network's output size.  This is the original's
    "downscale by f, then back up to the input size", and it keeps loader
    traffic f^2 times smaller.  Bilinear weights at every output pixel are
    non-negative and sum to 1, so each upsampled pixel is a convex combination
    of distributions over K: still a distribution (sums to 1, >= 0).
    """
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target, size=tuple(size), mode="bilinear", align_corners=False)


def kl_loss(scores, target, class_weights=None, return_labels=False):
    """KL(target || softmax(scores)) summed over K, averaged over pixels and images.

    scores (N, K, H, W) (any float dtype; computed in float32); target (N, K, s, s)
    posteriors at the target resolution, upsampled to (H, W) with upsample_targets.
    class_weights: optional (K,) tensor; a pixel's KL is multiplied by the weight of
    its target's argmax cluster (class rebalancing), then averaged over all pixels
    (weights are expected to be normalised so that their prior expectation is 1).
    With return_labels, also returns the (N, H, W) argmax target labels.
    """
    target = upsample_targets(target.float(), scores.shape[-2:])
    log_p = F.log_softmax(scores.float(), dim=1)
    kl = (torch.xlogy(target, target) - target * log_p).sum(1)       # (N, H, W); 0 log 0 = 0
    labels = target.argmax(1) if (return_labels or class_weights is not None) else None
    if class_weights is not None:
        kl = kl * class_weights.to(kl.device, kl.dtype)[labels]
    loss = kl.mean()
    return (loss, labels) if return_labels else loss


def is_better(val_loss, best_loss) -> bool:
    """True when val_loss is a new best: finite and strictly LOWER than the best so far.
    (The original kept its 'best' model when the validation loss went up.)"""
    return val_loss is not None and math.isfinite(val_loss) and (best_loss is None or val_loss < best_loss)


# ----------------------------------------------------------------------------- setup
def resolve_device(device="auto", log=print) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU falls back to cpu (logged)."""
    want = str(device)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    elif want.startswith("cuda") and not torch.cuda.is_available():
        log(f"device {device!r} requested but CUDA is not available: falling back to CPU")
        want = "cpu"
    dev = torch.device(want)
    if dev.type == "cpu":
        log(f"training runs on CPU ({torch.get_num_threads()} threads): fine for the tiny test/demo "
            f"configs, very slow at full size (256x256, width 1) -- use a CUDA GPU for those")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)       # seeds CUDA too, lazily, without initialising it


def make_optimizer(model, cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optim"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if cfg["optim"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    raise ValueError(f"optim must be 'adam' or 'sgd', got {cfg['optim']!r}")


def load_model_from_checkpoint(path, device="cpu"):
    """Rebuild the model stored in a checkpoint.pt / best.pt (weights_only load)."""
    from models.fcn import build_model
    ckpt = load_checkpoint(path, map_location="cpu")
    model = build_model(**ckpt["model_settings"])
    model.load_state_dict(ckpt["model"])
    return model.to(device)


def git_info(path=None) -> dict:
    """{'revision': HEAD of the repository holding this file or 'unknown', 'dirty': bool|None}."""
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "-C", cwd, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=20)
        if rev.returncode != 0:
            return {"revision": "unknown", "dirty": None}
        status = subprocess.run(["git", "-C", cwd, "status", "--porcelain"], capture_output=True,
                                text=True, timeout=60)
        return {"revision": rev.stdout.strip(),
                "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"revision": "unknown", "dirty": None}


def _quiet(*args, **kwargs):
    pass


def _plain(obj):
    """JSON round trip: plain Python types only (what weights_only loading accepts)."""
    return json.loads(json.dumps(obj, default=str))


# ----------------------------------------------------------------------------- steps
def _to_device(x, target, device):
    cuda = device.type == "cuda"
    x = x.to(device, non_blocking=cuda)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, target.to(device, non_blocking=cuda)


def _autocast(device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def new_train_state(n_classes, device, world_size=1) -> dict:
    """Mutable state shared by fit and train_one_epoch.  world_size > 1: train_one_epoch runs
    on one rank of a process group (batches are per-rank shares of the global batch)."""
    return {"iteration": 0, "epoch": 0, "position": 0, "images": 0, "stop": False,
            "class_weights": None, "loss_sum": 0.0, "steps": 0,
            "meter": ConfusionMeter(n_classes, device), "world_size": int(world_size)}


def _mean_over_ranks(value):
    """All-reduced mean of a scalar tensor over the default process group, as a float."""
    import torch.distributed as dist
    value = value.detach().float().clone()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def train_one_epoch(model, loader, optimizer, device, state, cfg, on_step=None) -> int:
    """Train on the rest of the current epoch (loader.sampler already positioned), stopping
    early at cfg['max_iteration'] steps or when state['stop'] is set.

    Per step: state['iteration'] += 1, state['position'] += batch size (the global batch with
    state['world_size'] > 1), the step's loss (the mean over ranks) and confusion matrix (this
    rank's; fit all-reduces it) are accumulated into state, then on_step(iteration,
    max_iteration, loss) is called (fit validates and checkpoints from there).  When the epoch is exhausted,
    state['epoch'] += 1 and state['position'] = 0.  Returns the number of steps taken.
    """
    max_iteration = int(cfg["max_iteration"])
    weights = state.get("class_weights")
    world_size = state.get("world_size", 1)
    steps = 0
    for x, target in loader:
        if state["iteration"] >= max_iteration or state["stop"]:
            return steps
        model.train()                                     # on_step may have run an evaluation
        x, target = _to_device(x, target, device)
        with _autocast(device):
            scores = model(x)
        loss, labels = kl_loss(scores, target, weights, return_labels=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        state["iteration"] += 1
        state["position"] += x.shape[0] * world_size
        state["images"] += x.shape[0] * world_size
        loss_value = loss.item() if world_size == 1 else _mean_over_ranks(loss)
        state["loss_sum"] += loss_value
        state["steps"] += 1
        state["meter"].update(scores.detach(), labels)
        if on_step is not None:
            on_step(state["iteration"], max_iteration, loss_value)
        if state["iteration"] >= max_iteration or state["stop"]:
            return steps
    state["epoch"] += 1
    state["position"] = 0
    return steps


@torch.inference_mode()
def evaluate(model, loader, device, n_classes, class_weights=None, all_reduce=False) -> dict:
    """Eval-mode loss and scores over every image of `loader`:
    dict(loss, acc, acc_cls, mean_iu, fwavacc), loss = mean KL over all pixels.
    all_reduce: `loader` holds this rank's share of the split; the loss sums, image counts
    and confusion matrices of all ranks are summed (every rank gets the split's scores).
    Pass the bare model, not a DistributedDataParallel wrapper (ranks may hold unequal
    shares, so no collective may run per batch)."""
    was_training = model.training
    model.eval()
    meter = ConfusionMeter(n_classes, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(0)
    for x, target in loader:
        x, target = _to_device(x, target, device)
        with _autocast(device):
            scores = model(x)
        loss, labels = kl_loss(scores, target, class_weights, return_labels=True)
        total += loss.double() * x.shape[0]
        n += x.shape[0]
        meter.update(scores, labels)
    model.train(was_training)
    if all_reduce:
        import torch.distributed as dist
        count = torch.tensor(float(n), dtype=torch.float64, device=device)
        for t in (total, count, meter.hist):
            dist.all_reduce(t)
        n = int(count.item())
    out = {"loss": float(total / n) if n else float("nan")}
    out.update(meter.scores())
    return out


# ----------------------------------------------------------------------------- logging
class Progress:
    """Console progress: a '\\r' line (<= 10 per second) when stderr is a tty, else a plain
    line every ~10% of the run."""

    def __init__(self, max_iteration, start, log=print, stream=None):
        self.max, self.start, self.log = max_iteration, start, log
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, max_iteration // 10)
        self.t0 = self.last = time.time()

    def update(self, iteration, loss):
        now = time.time()
        rate = (iteration - self.start) / max(now - self.t0, 1e-9)
        line = (f"iter {iteration}/{self.max} ({100 * iteration / self.max:.0f}%)  "
                f"loss {loss:.4f}  {rate:.2f} it/s")
        if self.tty:
            if now - self.last >= 0.1 or iteration == self.max:
                self.stream.write("\r" + line + " " * 4)
                self.stream.flush()
                self.last = now
        elif iteration % self.every == 0 or iteration == self.max:
            self.log(line)

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _format(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


def _append_rows(path, rows):
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(LOG_COLUMNS)
        for row in rows:
            w.writerow([_format(row[c]) for c in LOG_COLUMNS])
        f.flush()
        os.fsync(f.fileno())


def _truncate_log(path, iteration):
    """Drop rows logged after the checkpoint we resume from (their steps are redone)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["iteration"]) <= iteration]
    if len(kept) != len(rows):
        lines = [",".join(LOG_COLUMNS)] + [",".join(r[c] for c in LOG_COLUMNS) for r in kept]
        write_text_atomic(path, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- fit
def _check_resume(ckpt, cfg, arch, settings):
    if ckpt.get("arch") != arch or ckpt.get("model_settings") != settings:
        raise ValueError(f"checkpoint is for {ckpt.get('arch')} {ckpt.get('model_settings')}, "
                         f"this run is {arch} {settings}: use another run folder")
    old, new = ckpt.get("cfg", {}), _plain(cfg)
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        raise ValueError(f"cannot resume: config keys {changed} differ from the checkpoint's "
                         f"({ {k: old.get(k) for k in changed} }); use another run folder")


def _tiles(model, dataset, mean_L, gmm, device, n):
    from pipeline.color import lab_to_rgb
    from .visual import tile_grid, tile_image
    rows = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(min(n, len(dataset))):
            v = dataset.get_visual(i)
            x = torch.from_numpy(v["L"] - mean_L)[None, None].to(device)
            with _autocast(device):
                scores = model(x)
            pred = torch.softmax(scores.float(), 1)[0].cpu().numpy()
            rgb = lab_to_rgb(np.concatenate([v["L"][..., None], np.moveaxis(v["ab"], 0, -1)], -1))
            rows.append(tile_image(rgb, v["posteriors"], v["L"], pred, gmm, decoded=gmm is not None))
    model.train(was_training)
    return tile_grid(rows)


def fit(run_dir, cfg, arch, data, init_checkpoint=None, device="auto", loader_workers=0,
        log=print, on_step=None, stop_after=None, distributed=False, sync_bn=True) -> dict:
    """Train `arch` on data["train"], validating on data["val"]; resume if run_dir has a
    checkpoint.  data: {"train": [(lab, label), ...], "val": [...], "mean_L": float,
    "gmm": mixture dict, "n_clusters": K, "class_weights": optional (K,) array}.

    init_checkpoint: a finished coarser run's best.pt, copied in with init_from_fcn
    (ignored when resuming).  on_step(iteration, max_iteration, loss) is called after every
    step.  stop_after: end this session after that many steps in total (the run stays
    resumable).  Returns {best_val_loss, best_iteration, final (last validation metrics),
    iterations, images_per_s, elapsed_s, device, resumed_from, complete, run_dir}.

    distributed: this process is one rank of the default torch.distributed process group
    (every rank calls fit with the same arguments, `device` its own; without a process group
    it is one process); see the module docstring.  Only rank 0 logs and writes; on_step runs
    on every rank (with the mean loss over ranks).  sync_bn: convert BatchNorm to
    SyncBatchNorm (distributed only).
    """
    from models.fcn import build_model, init_from_fcn, load_vgg16_bn_weights, model_settings

    t_session = time.time()
    from . import distributed as ddp
    rank, world_size = ddp.rank_and_world() if distributed else (0, 1)
    if rank != 0:
        log = _quiet
    run_dir = Path(run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
    if world_size > 1:
        ddp.barrier()                                      # the folder exists, no stale temporaries
    device = resolve_device(device, log)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    seed = int(cfg["seed"])
    seed_everything(seed)                                  # once; resume then restores the states

    # -- data
    n_classes = int(data["n_clusters"])
    train_set = ShardDataset(data["train"], data["mean_L"], flip=bool(cfg["flip"]))
    val_set = ShardDataset(data["val"], data["mean_L"], flip=False)
    for name, ds in (("training", train_set), ("validation", val_set)):
        if len(ds) == 0:
            raise ValueError(f"the {name} split has no images ({len(ds.pairs)} shards, all empty)")
        if ds.n_classes != n_classes:
            raise ValueError(f"{name} label shards have K={ds.n_classes}, data says n_clusters={n_classes}")
    batch_size = int(cfg["batch_size"])
    if world_size > 1:
        batch_size = ddp.per_rank_batch(batch_size, world_size, len(train_set))
    train_loader = make_loader(train_set, batch_size, True, loader_workers, seed, pin_memory=cuda,
                               drop_last=len(train_set) >= batch_size * world_size,
                               rank=rank, world_size=world_size)
    val_loader = make_loader(val_set, batch_size, False, loader_workers, seed, pin_memory=cuda,
                             rank=rank, world_size=world_size)
    class_weights = data.get("class_weights")
    if class_weights is not None:
        class_weights = torch.as_tensor(np.asarray(class_weights, np.float32), device=device)
        if class_weights.shape != (n_classes,):
            raise ValueError(f"class_weights must have shape ({n_classes},), got {tuple(class_weights.shape)}")

    # -- model, optimiser, resume
    model = build_model(arch, n_classes, cfg["width"])
    settings = model_settings(model)
    ckpt_path, best_path, log_path = run_dir / "checkpoint.pt", run_dir / "best.pt", run_dir / "log.csv"
    resume = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if resume is None:
        if cfg.get("vgg_weights"):
            loaded = load_vgg16_bn_weights(model, cfg["vgg_weights"])
            log(f"trunk initialised from {cfg['vgg_weights']} ({len(loaded)} layers)")
        if init_checkpoint:
            coarse = load_model_from_checkpoint(init_checkpoint)
            copied = init_from_fcn(model, coarse)
            log(f"initialised from {init_checkpoint} ({coarse.arch}): {len(copied)} tensors copied")
    if world_size > 1 and sync_bn:
        model = ddp.convert_sync_batchnorm(model, device)
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    train_model = ddp.wrap(model, device) if world_size > 1 else model  # model: the bare module
    optimizer = make_optimizer(model, cfg)
    if world_size > 1:
        ddp.seed_rank(seed, rank, 0)                       # own dropout masks on every rank
    state = new_train_state(n_classes, device, world_size)
    state["class_weights"] = class_weights
    best_loss, best_iteration, last_val, elapsed_before = None, None, None, 0.0
    resumed_from = None
    if resume is not None:
        _check_resume(resume, cfg, arch, settings)
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        state.update(iteration=resume["iteration"], epoch=resume["epoch"], position=resume["position"])
        best_loss, best_iteration = resume["best_loss"], resume["best_iteration"]
        last_val, elapsed_before = resume["last_val"], resume["elapsed_s"]
        if world_size > 1:
            ddp.restore_rng(resume, seed, rank, world_size, train_loader.generator, log)
        else:
            set_rng_states(resume["rng"], train_loader.generator)
        if rank == 0:
            _truncate_log(log_path, state["iteration"])
        resumed_from = state["iteration"]
        log(f"resuming {run_dir} from iteration {resumed_from}")

    max_iteration, interval = int(cfg["max_iteration"]), int(cfg["interval_validate"])
    if rank == 0:
        write_text_atomic(run_dir / "config.json", json.dumps(_plain({
            "cfg": cfg, "arch": arch, "model_settings": settings, "init_checkpoint": init_checkpoint,
            "data": {"n_train": len(train_set), "n_val": len(val_set), "train_shards": len(train_set.pairs),
                     "val_shards": len(val_set.pairs), "image_size": train_set.image_size,
                     "target_size": train_set.target_size, "n_clusters": n_classes,
                     "mean_L": float(data["mean_L"]),
                     "class_weights": None if class_weights is None else class_weights.tolist()},
            "git": git_info(), "device": str(device), "torch": torch.__version__,
            "world_size": world_size, "resumed_from": resumed_from}), indent=2) + "\n")

    if rank == 0 and data.get("gmm"):
        from pipeline.gmm import save_gmm
        save_gmm(run_dir / "gmm.npz", data["gmm"])          # the clusters the scores refer to
    writer = progress = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=(state["iteration"] + 1) if resume else None)
        progress = Progress(max_iteration, state["iteration"], log)
    gmm = data.get("gmm")
    timing = {"val_s": 0.0}

    def validate():
        nonlocal best_loss, best_iteration, last_val
        t0 = time.time()
        it = state["iteration"]
        lr = optimizer.param_groups[0]["lr"]
        if world_size > 1:
            ddp.all_reduce_(state["meter"].hist)
        train_row = {"loss": state["loss_sum"] / max(state["steps"], 1), **state["meter"].scores()}
        val = evaluate(model, val_loader, device, n_classes, all_reduce=world_size > 1)
        elapsed = elapsed_before + time.time() - t_session
        best = is_better(val["loss"], best_loss)
        if best:
            best_loss, best_iteration = val["loss"], it
        last_val = dict(val)
        rng = rng_states(train_loader.generator)
        rng["loader"] = state["loader_rng"]   # the loader generator as it was at the epoch's start
        rng_ranks = ddp.gather_rng(rng) if world_size > 1 else None
        if rank != 0:
            state.update(loss_sum=0.0, steps=0)
            state["meter"].reset()
            timing["val_s"] += time.time() - t0
            return
        common = {"iteration": it, "epoch": state["epoch"], "lr": lr, "elapsed_s": round(elapsed, 3)}
        _append_rows(log_path, [{**common, "split": "train", **train_row},
                                {**common, "split": "valid", **val}])
        for split, row in (("train", train_row), ("valid", val)):
            for key in ("loss", "acc", "acc_cls", "mean_iu", "fwavacc"):
                writer.add_scalar(f"{split}/{key}", row[key], it)
        writer.add_scalar("lr", lr, it)
        grid = _tiles(model, val_set, float(data["mean_L"]), gmm, device, N_VISUAL)
        from .visual import save_jpeg
        save_jpeg(run_dir / "tiles" / f"iter{it:06d}.jpg", grid)
        writer.add_image("tiles", grid, it, dataformats="HWC")
        writer.flush()
        payload = {"model": model.state_dict(), "model_settings": settings, "arch": arch,
                   "cfg": _plain(cfg), "iteration": it, "epoch": state["epoch"],
                   "position": state["position"], "best_loss": best_loss,
                   "best_iteration": best_iteration, "last_val": last_val, "elapsed_s": elapsed,
                   "val": dict(val),
                   # colorizing needs these too: a copied best.pt is self-contained
                   "mean_L": float(data["mean_L"]),
                   "gmm": {k: torch.as_tensor(v) for k, v in gmm.items()} if gmm else None}
        if best:                                      # best.pt first: see module docstring
            save_checkpoint(best_path, payload)
        payload.update(optimizer=optimizer.state_dict(), rng=rng)
        if rng_ranks is not None:                     # every rank's RNGs (dropout), rank 0's = rng
            payload["rng_ranks"] = rng_ranks
        save_checkpoint(ckpt_path, payload)
        state.update(loss_sum=0.0, steps=0)
        state["meter"].reset()
        timing["val_s"] += time.time() - t0

    def step_hook(iteration, max_it, loss):
        if progress is not None:
            progress.update(iteration, loss)
        if on_step is not None:
            on_step(iteration, max_it, loss)
        if iteration % interval == 0 or iteration == max_it:
            validate()
        if stop_after is not None and iteration >= stop_after:
            state["stop"] = True

    t_loop = time.time()
    start_iteration = state["iteration"]
    empty_epochs = 0
    try:
        while state["iteration"] < max_iteration and not state["stop"]:
            if stop_after is not None and state["iteration"] >= stop_after:
                break
            state["loader_rng"] = train_loader.generator.get_state()   # before iter(): worker seeds
            train_loader.sampler.set_epoch(state["epoch"], start=state["position"])
            steps = train_one_epoch(train_model, train_loader, optimizer, device, state, cfg, step_hook)
            empty_epochs = 0 if steps else empty_epochs + 1
            if empty_epochs > 1:
                raise RuntimeError("the training loader yields no batches")
    finally:
        if rank == 0:
            progress.close()
            writer.close()
        train_set.close()
        val_set.close()
    train_s = max(time.time() - t_loop - timing["val_s"], 1e-9)
    done = state["iteration"] - start_iteration
    complete = state["iteration"] >= max_iteration
    if rank == 0 and log_path.exists():
        from .visual import plot_curves
        plot_curves(log_path, run_dir)
    result = {"best_val_loss": best_loss, "best_iteration": best_iteration, "final": last_val,
              "iterations": state["iteration"], "images_per_s": state["images"] / train_s if done else None,
              "elapsed_s": elapsed_before + time.time() - t_session, "device": str(device),
              "resumed_from": resumed_from, "complete": complete, "run_dir": str(run_dir)}
    if complete and rank == 0:
        write_text_atomic(run_dir / "summary.json", json.dumps(_plain(result), indent=2) + "\n")
        log(f"done: {state['iteration']} iterations, best val loss {best_loss} at iteration "
            f"{best_iteration}" + (f", {result['images_per_s']:.1f} images/s" if done else ""))
    if world_size > 1:
        ddp.barrier()                                      # rank 0 has written everything
    return result
