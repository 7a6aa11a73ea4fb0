"""Iteration-based training of a Colorizer: fit (the steps themselves: train.steps).

fit() runs cfg["max_iteration"] optimiser steps.  Every cfg["interval_validate"]
steps, and at the last step, it evaluates on the WHOLE validation split and
writes, in this order: two log.csv rows (train.runlog), TensorBoard scalars, a
tile image, best.pt (when the validation is the best so far: cfg best_by, train.best), checkpoint.pt.
Rerunning fit on a run_dir holding checkpoint.pt resumes from it: weights,
optimiser, iteration, epoch and position inside it, best loss and every RNG are
restored, log rows written after the checkpoint are dropped, and the run ends at
the same weights an uninterrupted run reaches (on CPU).

A first SIGINT/SIGTERM ends the session after the current step: checkpoint.pt is written at
that iteration (with the train row's sums so far, so the resumed run logs what an
uninterrupted one does), one line is printed and train.stop.TrainingStopped is raised; a
second signal ends the process at once (train/stop.py).  No host sync per step: the loss and
the confusion counts stay on the device, read back every LOG_EVERY steps and at validation.

One writer per run folder, fresh starts start fresh (README "One writer per run folder"):
  - fit holds an exclusive lock on the run folder (pipeline.runlock, <run>/.lock) from
    start to end; a second fit on it waits (or, wait=False, fails naming the holder),
    then finds the run complete and returns its result, or resumes it;
  - the last two checkpoints are kept (checkpoint.pt, checkpoint.prev.pt); an unreadable
    checkpoint.pt falls back to the previous one (train.checkpoint.latest_checkpoint);
  - a run that starts from iteration 0 first removes what an earlier attempt wrote
    (train.runfolder.EARLIER_ATTEMPT: done.json first, then best.pt, checkpoints, logs, tiles, tb/,
    plots and eval-* folders);
  - best.pt deleted while the checkpoint records a best validation: rewritten from the
    checkpoint when that is the best one's, else the best weights are lost and the run
    restarts from iteration 0 (one line says so), so Luigi's task (done.json AND best.pt)
    completes again.

Distributed (fit(..., distributed=True) inside an initialised torch.distributed process
group, see train/distributed.py): cfg["batch_size"] is the GLOBAL batch, split evenly over
the ranks; BatchNorm becomes SyncBatchNorm and the colorizer is wrapped in
DistributedDataParallel; per-step losses and the train confusion matrix are all-reduced;
every rank evaluates its share of the validation split and the loss sums and confusion
matrices are all-reduced; rank 0 alone writes the run folder.  `iteration`, `epoch` and
`position` (images of the epoch consumed by all ranks together) mean what they mean in a
single process, so a checkpoint resumes with any number of ranks.

Run folder:
  inputs.json        what the run trains on (pipeline.run_inputs; written before fit)
  config.json        resolved cfg, arch, data sizes, git revision + dirty flag
  log.csv            train.runlog.LOG_COLUMNS
  .lock              held by the process training the run (its host, pid, start time)
  checkpoint.pt      latest validation (or stop signal): everything needed to resume
  checkpoint.prev.pt the one before (resume point when checkpoint.pt is unreadable); removed
                     once done.json is written
  best.pt            best validation so far (best_by): the Colorizer (settings + weights)
  tb/                TensorBoard events
  tiles/iterNNNNNN.jpg   colour | target clusters | gray | predicted clusters | decoded colour
  loss.png, iou.png  curves from log.csv (written at the end)
  done.json          the dict fit returns, written last, once max_iteration is reached
                     (the Luigi training task's output: the run is complete)
"""
import json
import time
from pathlib import Path

import numpy as np
import torch

from models.colorizer import Colorizer
from models.device import resolve_device, use_channels_last
from models.fcn import init_bn_gamma, init_from_fcn, load_vgg16_bn_weights
from pipeline.atomic import remove_stale_temporaries, write_text_atomic
from pipeline.progress import Progress, say
from pipeline.run_inputs import portable_path
from pipeline.runlock import RunLock

from . import ddp
from .best import best_score, is_better
from .checkpoint import load_checkpoint, previous_path, save_checkpoint
from .data import ShardDataset, make_loader
from .metrics import ConfusionMeter
from .rng import rng_states, seed_everything, set_rng_states
from .runfolder import start_point
from .runlog import append_rows, git_info, plain, split_label, truncate_log, write_config
from .steps import LOG_EVERY, SCORE_KEYS, TrainState, make_optimizer, train_one_epoch, validate
from .stop import TrainingStopped, stop_signals, stopped_message
from .visual import plot_curves, save_jpeg, validation_tiles

N_VISUAL = 4                  # validation images drawn in each tile image


# ----------------------------------------------------------------------------- set-up
def build_colorizer(inputs, log=say, initialise=True):
    """A fresh Colorizer for the run's inputs; initialise: started from the vgg_weights file
    and/or the coarser run's best.pt when the config / inputs name them (initialise_colorizer)."""
    cfg = inputs.cfg
    colorizer = Colorizer(inputs.arch, inputs.n_clusters, cfg["width"], cfg["im_size"],
                          inputs.mean_L, inputs.gmm_arrays())
    init_bn_gamma(colorizer.net, cfg["bn_gamma_init"])
    if initialise:
        initialise_colorizer(colorizer, inputs, log)
    return colorizer


def initialise_colorizer(colorizer, inputs, log=say):
    """Load the vgg_weights file and/or the coarser run's best.pt into a fresh colorizer."""
    cfg = inputs.cfg
    if cfg.get("vgg_weights"):
        loaded = load_vgg16_bn_weights(colorizer.net, cfg["vgg_weights"])
        log(f"trunk initialised from {cfg['vgg_weights']} ({len(loaded)} layers)")
    if inputs.init_checkpoint:
        path = Path(inputs.init_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{inputs.arch} starts from {path}, which does not exist: train "
                                    f"the coarser run first")
        coarse = Colorizer.from_checkpoint(load_checkpoint(path), str(path))
        copied = init_from_fcn(colorizer.net, coarse.net)
        log(f"initialised from {path} ({coarse.arch}): {len(copied)} tensors copied")


def _restore(resume, state, colorizer, optimizer, train_loader, seed, rank, log):
    colorizer.load_state_dict(resume["state_dict"])
    optimizer.load_state_dict(resume["optimizer"])
    state.iteration, state.epoch, state.position = resume["iteration"], resume["epoch"], resume["position"]
    state.best_loss, state.best_iteration = resume["best_loss"], resume["best_iteration"]
    state.best_score = resume.get("best_score", state.best_loss)
    state.last_val, state.elapsed_before = resume["last_val"], resume["elapsed_s"]
    state.saved_iteration = state.iteration
    since = resume.get("since_validation")        # a checkpoint written on a stop signal
    if since is not None:                         # the train row's sums, all ranks' on rank 0
        state.steps, state.window = since["steps"], (since["loss_sum"], since["steps"])
        if rank == 0:
            state.loss_sum.fill_(since["loss_sum"] * state.world_size)
            state.meter.hist.copy_(since["hist"])
    if state.world_size > 1:
        ddp.restore_rng(resume, seed, rank, state.world_size, train_loader.generator, log)
    else:
        set_rng_states(resume["rng"], train_loader.generator)


def _datasets(inputs, n_classes):
    train_set = ShardDataset(inputs.train, flip=bool(inputs.cfg["flip"]))
    val_set = ShardDataset(inputs.val, flip=False)
    for name, ds in (("training", train_set), ("validation", val_set)):
        if len(ds) == 0:
            raise ValueError(f"the {name} split has no images ({len(ds.pairs)} shards, all empty)")
        if ds.n_classes != n_classes:
            raise ValueError(f"{name} label shards have K={ds.n_classes}, the config n_clusters={n_classes}")
    return train_set, val_set


# ----------------------------------------------------------------------------- fit
def fit(run_dir, inputs, device="auto", loader_workers=0, log=say, on_step=None, stop_after=None,
        distributed=False, sync_bn=True, wait=True, log_every=LOG_EVERY) -> dict:
    """Train inputs.arch on inputs.train, validating on inputs.val; resume if run_dir has a
    checkpoint.  inputs: a pipeline.run_inputs.RunInputs.

    on_step(iteration, max_iteration, loss) is called after every step (loss: a 0-dim tensor
    on the device, train_one_epoch).  stop_after: end this session after that many steps in
    total (the run stays resumable).  log_every: steps between read-backs of the loss (the
    progress line; distributed, also when the ranks agree on a stop signal).  A stop signal
    raises train.stop.TrainingStopped after saving (module docstring).  Returns
    {best_val_loss, best_iteration, final (last validation metrics), iterations,
    images_per_s, elapsed_s, device, resumed_from, complete, run_dir}.

    One writer per run folder: fit holds an exclusive lock on run_dir (pipeline.runlock)
    while it works.  When another process holds it, fit waits for it (saying so now and
    then), or, wait=False, raises RunLocked naming the holder's host and pid.  A run that
    is already complete (checkpoint at max_iteration, best.pt and done.json) returns
    done.json's result without training or writing anything.

    distributed: this process is one rank of the default torch.distributed process group
    (every rank calls fit with the same arguments, `device` its own); see the module
    docstring.  Only rank 0 logs, locks and writes; on_step runs on every rank.  sync_bn:
    convert BatchNorm to SyncBatchNorm (distributed only)."""
    rank, world_size = ddp.rank_and_world() if distributed else (0, 1)
    if rank != 0:
        log = _quiet
    run_dir = Path(run_dir)
    lock = RunLock(run_dir, log=log, hold=rank == 0)
    lock.acquire(wait, agree=ddp.from_rank0 if world_size > 1 else None)
    try:
        with stop_signals() as signals:
            return _fit_locked(run_dir, inputs, device, loader_workers, log, on_step, stop_after,
                               rank, world_size, sync_bn, signals, log_every)
    finally:
        lock.release()


def _fit_locked(run_dir, inputs, device, loader_workers, log, on_step, stop_after, rank, world_size,
                sync_bn, signals, log_every) -> dict:
    cfg, t_session = inputs.cfg, time.time()
    if rank == 0:
        remove_stale_temporaries(run_dir)
    seed = int(cfg["seed"])
    seed_everything(seed)                                  # once; resume then restores the states
    colorizer = build_colorizer(inputs, log, initialise=False)
    settings = colorizer.settings()

    # -- where to start: rank 0 decides (and clears or repairs the folder), every rank follows
    kept = {}                                              # rank 0's checkpoint dict, loaded once

    def decide():
        shapes = ({k: tuple(v.shape) for k, v in colorizer.state_dict().items()},
                  [tuple(p.shape) for p in colorizer.parameters() if p.requires_grad])   # make_optimizer's
        start, kept["resume"] = start_point(run_dir, cfg, settings, log, shapes)
        return start
    start = ddp.on_rank0(decide, rank, world_size)
    if start["done"] is not None:
        log(f"{run_dir} is already complete ({start['done'].get('iterations')} iterations): nothing to do")
        return start["done"]
    resume = kept["resume"] if rank == 0 else (
        load_checkpoint(start["checkpoint"]) if start["checkpoint"] else None)
    if resume is None:
        initialise_colorizer(colorizer, inputs, log)

    device = resolve_device(device, warn=log)
    if device.type == "cpu":
        log(f"training runs on CPU ({torch.get_num_threads()} threads): fine for the tiny test/demo "
            f"configs, very slow at full size (256x256, width 1) -- use a CUDA GPU for those")
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda

    # -- data
    n_classes = inputs.n_clusters
    train_set, val_set = _datasets(inputs, n_classes)
    batch_size = int(cfg["batch_size"])
    if world_size > 1:
        batch_size = ddp.per_rank_batch(batch_size, world_size, len(train_set))
    train_loader = make_loader(train_set, batch_size, cfg["shuffle"], loader_workers, seed, pin_memory=cuda,
                               drop_last=len(train_set) >= batch_size * world_size,
                               rank=rank, world_size=world_size)
    val_loader = make_loader(val_set, batch_size, False, loader_workers, seed, pin_memory=cuda,
                             rank=rank, world_size=world_size)
    class_weights = None
    if inputs.class_weights is not None:
        class_weights = torch.as_tensor(np.asarray(inputs.class_weights, np.float32), device=device)
        if class_weights.shape != (n_classes,):
            raise ValueError(f"class_weights must have shape ({n_classes},), got {tuple(class_weights.shape)}")

    # -- colorizer, optimiser, resume
    ckpt_path, best_path, log_path = run_dir / "checkpoint.pt", run_dir / "best.pt", run_dir / "log.csv"
    if world_size > 1 and sync_bn:
        colorizer = ddp.convert_sync_batchnorm(colorizer, device)
    colorizer.to(device)
    precision, channels_last = cfg.get("precision", "auto"), cfg.get("channels_last", "auto")
    if use_channels_last(channels_last, device):
        colorizer.to(memory_format=torch.channels_last)
    train_model = ddp.wrap(colorizer, device) if world_size > 1 else colorizer   # colorizer: the bare module
    optimizer = make_optimizer(colorizer, cfg)
    if world_size > 1:
        ddp.seed_rank(seed, rank, 0)                       # own dropout masks on every rank
    state = TrainState(meter=ConfusionMeter(n_classes, device), world_size=world_size,
                       class_weights=class_weights, kl_reduction=cfg["kl_reduction"],
                       precision=precision, channels_last=channels_last, signals=signals,
                       log_every=log_every)
    resumed_from = None
    if resume is not None:
        _restore(resume, state, colorizer, optimizer, train_loader, seed, rank, log)
        if rank == 0:
            truncate_log(log_path, state.iteration)
        resumed_from = state.iteration
        log(f"resuming {run_dir} from iteration {resumed_from}")

    max_iteration, interval = int(cfg["max_iteration"]), int(cfg["interval_validate"])
    if rank == 0:
        write_config(run_dir, {
            "cfg": cfg, "arch": inputs.arch, "settings": {k: v for k, v in settings.items() if k != "gmm"},
            "init_checkpoint": inputs.init_checkpoint and portable_path(inputs.init_checkpoint, run_dir),
            "dataset": inputs.dataset,
            "data": {"n_train": len(train_set), "n_val": len(val_set), "train_shards": len(train_set.pairs),
                     "val_shards": len(val_set.pairs), "image_size": train_set.image_size,
                     "target_size": train_set.target_size, "n_clusters": n_classes,
                     "class_weights": inputs.class_weights},
            "git": git_info(), "device": str(device), "torch": torch.__version__,
            "world_size": world_size, "resumed_from": resumed_from})
    writer = progress = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter   # slow import: only the writing rank
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=(state.iteration + 1) if resume else None)
        progress = Progress(max_iteration, f"{inputs.arch} train", start=state.iteration, unit=" it/s")
    timing = {"val_s": 0.0}
    data_split = {"train": cfg["train_split"], "valid": cfg["val_split"]}   # log.csv, console: which photos
    val_label = split_label(cfg)

    def payload(it, elapsed, val):
        """best.pt's dict (checkpoint.pt adds save_resume_point's keys)."""
        return {"settings": settings, "state_dict": colorizer.state_dict(), "arch": inputs.arch,
                "cfg": plain(cfg), "iteration": it, "max_iteration": max_iteration, "epoch": state.epoch,
                "position": state.position, "best_loss": state.best_loss,
                "best_iteration": state.best_iteration, "best_score": state.best_score,
                "last_val": state.last_val, "elapsed_s": elapsed, "val": val}

    def rng_for_checkpoint():
        """Every rank (a gather when distributed): (rng, rng_ranks) for save_resume_point."""
        rng = rng_states(train_loader.generator)
        rng["loader"] = state.loader_rng          # the loader generator as it was at the epoch's start
        return rng, ddp.gather_rng(rng) if world_size > 1 else None

    def save_resume_point(ckpt, rng, rng_ranks):
        """Rank 0: checkpoint.pt (the previous one becomes checkpoint.prev.pt)."""
        ckpt.update(optimizer=optimizer.state_dict(), rng=rng)   # train.runfolder.RESUME_ONLY keys
        if rng_ranks is not None:                     # every rank's RNGs (dropout), rank 0's = rng
            ckpt["rng_ranks"] = rng_ranks
        save_checkpoint(ckpt_path, ckpt, keep_previous=True)

    def record(rows):
        """Rank 0: log rows, TensorBoard, tiles, best.pt, checkpoint.pt (in that order)."""
        it, lr = state.iteration, optimizer.param_groups[0]["lr"]
        elapsed = state.elapsed_before + time.time() - t_session
        score = best_score(rows["valid"], cfg["best_by"])
        best = is_better(score, state.best_score, cfg["best_by"])
        if best:
            state.best_loss, state.best_iteration, state.best_score = rows["valid"]["loss"], it, score
        rng, rng_ranks = rng_for_checkpoint()
        state.saved_iteration = it
        if rank != 0:
            return
        common = {"iteration": it, "epoch": state.epoch, "lr": lr, "elapsed_s": round(elapsed, 3)}
        append_rows(log_path, [{**common, "split": split, "data_split": data_split[split], **row}
                               for split, row in rows.items()])
        for split, row in rows.items():
            for key in SCORE_KEYS:
                writer.add_scalar(f"{split}/{key}", row[key], it)
        writer.add_scalar("lr", lr, it)
        grid = validation_tiles(colorizer, val_set, N_VISUAL)
        save_jpeg(run_dir / "tiles" / f"iter{it:06d}.jpg", grid)
        writer.add_image("tiles", grid, it, dataformats="HWC")
        writer.flush()
        ckpt = payload(it, elapsed, dict(rows["valid"]))
        if best:                                      # best.pt first: see the module docstring
            save_checkpoint(best_path, ckpt)
        save_resume_point(ckpt, rng, rng_ranks)
        v = rows["valid"]
        progress.note(f"{inputs.arch} {val_label} iteration {it}/{max_iteration}: loss {v['loss']:.4f}, "
                      f"mean IoU {v['mean_iu']:.3f}, "
                      f"pixel acc {v['acc']:.3f}" + ("  (new best)" if best else
                                                     f"  (best {state.best_loss:.4f} at {state.best_iteration})"))
        if it >= max_iteration and state.best_loss is not None:
            _log_hparams(writer, cfg, state.best_loss, it)

    def save_on_stop():
        """Every rank: a stop signal ended the session between validations.  checkpoint.pt at
        this iteration (unless one is there already), holding the sums of the train row since
        the last validation (all ranks' on rank 0), then TrainingStopped with the line printed."""
        it = state.iteration
        if state.saved_iteration != it and it > 0:
            if world_size > 1:
                ddp.all_reduce_(state.loss_sum)
                ddp.all_reduce_(state.meter.hist)
            rng, rng_ranks = rng_for_checkpoint()
            if rank == 0:
                ckpt = payload(it, state.elapsed_before + time.time() - t_session, state.last_val)
                ckpt["since_validation"] = {"loss_sum": state.loss_sum.item() / world_size,
                                            "steps": state.steps, "hist": state.meter.hist.cpu()}
                save_resume_point(ckpt, rng, rng_ranks)
            state.saved_iteration = it
        message = stopped_message(it, saved=state.saved_iteration is not None)
        if progress is not None:
            progress.close()                       # its line ends before this one
        log(message)
        if world_size > 1:
            ddp.barrier()          # torchrun ends every rank when one exits: not before rank 0 wrote
        raise TrainingStopped(message, it)

    def step_hook(iteration, max_it, loss):
        if progress is not None:
            progress.update(1, "" if state.window_loss is None else
                            "loss {:.4f} (mean of iterations {}-{})".format(state.window_loss,
                                                                            *state.window_iterations))
        if on_step is not None:
            on_step(iteration, max_it, loss)
        if iteration % interval == 0 or iteration == max_it:
            t0 = time.time()
            record(validate(colorizer, val_loader, device, state))
            timing["val_s"] += time.time() - t0
        if stop_after is not None and iteration >= stop_after:
            state.stop = True

    t_loop, start_iteration, empty_epochs = time.time(), state.iteration, 0
    try:
        while state.iteration < max_iteration and not state.stopping():
            if stop_after is not None and state.iteration >= stop_after:
                break
            state.loader_rng = train_loader.generator.get_state()    # before iter(): worker seeds
            train_loader.sampler.set_epoch(state.epoch, start=state.position)
            steps = train_one_epoch(train_model, train_loader, optimizer, device, state, max_iteration,
                                    step_hook)
            empty_epochs = 0 if steps else empty_epochs + 1
            if empty_epochs > 1:
                raise RuntimeError("the training loader yields no batches")
        if state.signalled and state.iteration < max_iteration:
            save_on_stop()
    finally:
        if rank == 0:
            progress.close()
            writer.close()
        train_set.close()
        val_set.close()
    train_s = max(time.time() - t_loop - timing["val_s"], 1e-9)
    done = state.iteration - start_iteration
    complete = state.iteration >= max_iteration
    if rank == 0 and log_path.exists():
        plot_curves(log_path, run_dir)
    result = {"best_val_loss": state.best_loss, "best_iteration": state.best_iteration,
              "final": state.last_val, "iterations": state.iteration,
              "images_per_s": state.images / train_s if done else None,
              "elapsed_s": state.elapsed_before + time.time() - t_session, "device": str(device),
              "resumed_from": resumed_from, "complete": complete, "run": Path(run_dir).name}
    if complete and rank == 0:
        write_text_atomic(run_dir / "done.json", json.dumps(plain(result), indent=2) + "\n")
        previous_path(ckpt_path).unlink(missing_ok=True)   # finished: best.pt + one resume point
        log(f"done: {state.iteration} iterations, best {val_label} loss {_rounded(state.best_loss)} at iteration "
            f"{state.best_iteration}" + (f", {result['images_per_s']:.1f} images/s" if done else ""))
    if world_size > 1:
        ddp.barrier()                                      # rank 0 has written everything
    return result


def _rounded(loss) -> str:
    return f"{loss:.4f}" if isinstance(loss, float) else str(loss)


def _log_hparams(writer, cfg, best_loss, iteration):
    """The run's config and best validation loss in TensorBoard's HPARAMS tab, in the run's own
    events file (SummaryWriter.add_hparams would start a second one), so runs compare there."""
    from torch.utils.tensorboard.summary import hparams
    values = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}
    for summary in hparams(values, {"hparam/best_val_loss": best_loss}):
        writer._get_file_writer().add_summary(summary)
    writer.add_scalar("hparam/best_val_loss", best_loss, iteration)


def _quiet(*args, **kwargs):
    pass
