"""Distributed data-parallel training (DDP) with torchrun.

    torchrun --nproc_per_node 4 -m train.distributed --config 14 --dataset /data/photos \\
        [--arch fcn32s] [--overrides '{"lr": 1e-5}'] [--work-dir work] [--run-dir DIR]

Every rank locates its inputs exactly as tasks.TrainFCN.run does (the Luigi task objects
give the label shard pairs, mean lightness, GMM, class weights and, for FCN-16s/8s, the
coarser run's best.pt), then runs train.loop.fit(..., distributed=True).  Nothing is
built here: the label shards (and the other inputs) must exist already, otherwise each
rank stops with a one-line error naming the Luigi command that builds them.  Without
--run-dir the run goes to the folder the Luigi task would use, and done.json is written
there at the end, so Luigi sees the task as complete (FCN-16s can then start from it).
Run without torchrun (no WORLD_SIZE in the environment), the module trains in one process.

Semantics (see also train/loop.py):
  batch        cfg["batch_size"] is the GLOBAL batch: each of the N ranks takes
               batch_size / N images per step (batch_size must be a multiple of N), so
               the loss, the learning rate and the number of images per iteration mean
               what they mean in one process: a config is the same experiment whatever N
               (same images per step; with dropout off, the same losses up to rounding).
               The run folder's signature does not depend on N either: a run started by
               Luigi in one process can be resumed here with N ranks, and back.
  data         every rank draws the same permutation of each epoch (from the shared seed
               and the epoch, train.data.EpochSampler) and takes the positions
               rank, rank + N, ... of it, stopping at the last whole global batch; the N
               per-rank batches of a step together are the single-process batch of that
               step, with the same per-sample flips.
  BatchNorm    converted to SyncBatchNorm (batch statistics over the global batch, as in
               one process); on CPU (gloo) to CPUSyncBatchNorm2d below: torch's own one
               only runs on GPUs.  --no-sync-bn keeps per-rank statistics (DDP then
               broadcasts rank 0's running statistics).
  dropout      every rank draws its own masks: rank r > 0 reseeds its RNGs from
               (seed, r) after the model is built, and checkpoints store every rank's RNG
               states (rng_ranks), so a resumed run with the same N redraws the same masks.
               A single process and N ranks draw different masks, so their losses only
               agree when dropout is off (tests/test_distributed.py).
  validation   every rank evaluates its share of the validation split (positions
               rank, rank + N, ...) with the bare model; the loss sums, image counts and
               confusion matrices are all-reduced, so every rank holds the split's scores.
  output       rank 0 alone writes the run folder (config.json, log.csv, tb/, tiles/,
               checkpoint.pt, best.pt, plots, summary.json, done.json).
  resume       every rank loads checkpoint.pt; iteration, epoch and position count global
               steps and images, so a run can resume with another number of ranks (then
               only the dropout masks of ranks > 0 differ from an uninterrupted run).
  backend      nccl (one GPU per rank, cuda:LOCAL_RANK) when CUDA is available, else gloo
               on CPU; --device cpu forces gloo on CPU.
"""
import argparse
import hashlib
import json
import os
import shlex
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

ARCHS = ("fcn32s", "fcn16s", "fcn8s")


# ----------------------------------------------------------------------------- helpers for fit
def rank_and_world():
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier():
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_(tensor):
    """In-place sum over ranks."""
    dist.all_reduce(tensor)
    return tensor


def per_rank_batch(global_batch: int, world_size: int, n_train: int) -> int:
    """cfg batch_size is the global batch: split it evenly over the ranks."""
    if global_batch % world_size:
        raise ValueError(f"batch_size {global_batch} (the global batch) is not a multiple of the "
                         f"{world_size} ranks: use a multiple of {world_size} or another number of ranks")
    if n_train < global_batch:
        raise ValueError(f"the training split has {n_train} images, fewer than one global batch "
                         f"({global_batch}): lower batch_size or train in one process")
    return global_batch // world_size


def rank_seed(seed: int, rank: int, iteration: int = 0) -> int:
    digest = hashlib.sha256(f"{seed}:rank{rank}:{iteration}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_rank(seed: int, rank: int, iteration: int = 0) -> None:
    """Give rank > 0 its own RNG streams (dropout masks); rank 0 keeps the run's seed."""
    if rank > 0:
        from .loop import seed_everything
        seed_everything(rank_seed(seed, rank, iteration))


def gather_rng(states: dict):
    """Every rank's RNG states, in rank order, on rank 0 (None elsewhere)."""
    rank, world = rank_and_world()
    out = [None] * world if rank == 0 else None
    dist.gather_object(states, out, dst=0)
    if out is not None:
        out = [_to_cpu(s) for s in out]
    return out


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def restore_rng(ckpt: dict, seed: int, rank: int, world_size: int, loader_generator, log=print):
    """Restore this rank's RNGs from a checkpoint: its own states when the checkpoint was
    written by as many ranks, else rank 0's states (rank 0) / fresh streams (other ranks)."""
    from .checkpoint import set_rng_states
    ranks = ckpt.get("rng_ranks")
    if ranks is not None and len(ranks) == world_size:
        set_rng_states(ranks[rank], loader_generator)
        return
    set_rng_states(ckpt["rng"], loader_generator)
    seed_rank(seed, rank, int(ckpt["iteration"]))
    if world_size > 1:
        log(f"checkpoint written by {len(ranks) if ranks else 1} process(es), resumed by {world_size}: "
            f"ranks > 0 draw new dropout masks (the run is not bit-identical to an uninterrupted one)")


class _CPUSyncBatchNormFn(torch.autograd.Function):
    """Batch norm with statistics over every rank's batch (any backend, e.g. gloo on CPU).

    Forward: one all-reduce of the per-channel sum, sum of squares and count (float64).
    Backward: one all-reduce of sum(dy) and sum(dy * xhat), the cross-rank terms of the
    input gradient.  grad weight / bias stay per-rank: DDP averages them over the ranks,
    which, with equal per-rank batches, is the gradient of the global-batch mean loss.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xd = x.double()
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims),
                           torch.tensor([x.numel() // c], dtype=torch.float64)])
        dist.all_reduce(stats, group=group)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)      # biased, as BN normalises
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
        if running_var is not None:
            unbiased = var * total / (total - 1).clamp_min(1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.total, ctx.group, ctx.dims, ctx.shape = float(total), group, dims, shape
        return y

    @staticmethod
    def backward(ctx, dy):
        xhat, weight, invstd = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        grad_x = grad_w = grad_b = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = sum_dy_xhat.clone()
        if ctx.needs_input_grad[2]:
            grad_b = sum_dy.clone()
        if ctx.needs_input_grad[0]:
            c = sum_dy.shape[0]
            both = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(both, group=ctx.group)
            mean_dy, mean_dy_xhat = (both[:c] / ctx.total).view(shape), (both[c:] / ctx.total).view(shape)
            scale = invstd if weight is None else invstd * weight
            grad_x = (dy - mean_dy - xhat * mean_dy_xhat) * scale.view(shape)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every rank's batch, for CPU tensors (gloo):
    torch.nn.SyncBatchNorm only runs on GPUs, and DistributedDataParallel refuses it on CPU
    modules.  Eval mode, or a single process, is plain BatchNorm2d.  Same parameters and
    buffers as BatchNorm2d: state_dicts load into the plain model."""

    def forward(self, input):
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:                       # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        return _CPUSyncBatchNormFn.apply(input, self.weight, self.bias, running_mean, running_var,
                                         self.eps, momentum, dist.group.WORLD)


def convert_sync_batchnorm(model, device):
    """BatchNorm layers -> batch statistics over all ranks: torch.nn.SyncBatchNorm on GPUs,
    CPUSyncBatchNorm2d (above) on CPU; weights and buffers kept."""
    if torch.device(device).type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = CPUSyncBatchNorm2d                 # adds no state: a safe swap
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, CPUSyncBatchNorm2d):
            raise TypeError(f"cannot synchronise {type(m).__name__} on CPU (BatchNorm2d only)")
    return model


def wrap(model, device):
    """DistributedDataParallel around `model` (already on `device`)."""
    from torch.nn.parallel import DistributedDataParallel
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


# ----------------------------------------------------------------------------- process group
def setup(device="auto"):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT).  Returns (rank, world_size, device); world_size 1 when not launched by
    torchrun (no process group then, device returned as given).  nccl with cuda:LOCAL_RANK
    when CUDA is available and device is not 'cpu', else gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return 0, 1, device                               # fit resolves it (CPU fallback)
    if str(device) != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs: "
                               f"--nproc_per_node must not exceed the GPUs of a host")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def teardown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- inputs from tasks.py
class MissingInputs(RuntimeError):
    pass


def _luigi_command(task) -> str:
    """`luigi --module tasks Family --param value ...` for a task instance (the significant
    parameters that differ from their defaults)."""
    from luigi.parameter import _no_value
    parts = ["luigi", "--module", "tasks", task.get_task_family()]
    for name, p in task.get_params():
        if not p.significant:
            continue
        value = p.serialize(getattr(task, name))
        if p._default is not _no_value and p.serialize(p._default) == value:
            continue
        parts += [f"--{name.replace('_', '-')}", value]
    return " ".join(shlex.quote(str(x)) for x in parts)


def task_inputs(config, overrides=None, dataset="", arch="fcn32s"):
    """(luigi task, data dict for fit, init checkpoint or None) as tasks.TrainFCN.run builds
    them; raises MissingInputs (a one-line message with the command to run) when the label
    shards, GMM, mean lightness, class prior or coarser run do not exist yet."""
    import tasks
    classes = {"fcn32s": tasks.TrainFCN32s, "fcn16s": tasks.TrainFCN16s, "fcn8s": tasks.TrainFCN8s}
    overrides = dict(overrides or {})
    task = classes[arch](config=config, overrides=overrides, dataset=dataset)
    reqs = task.requires()
    label_keys = ("train", "val", "gmm")
    if not all(reqs[k].complete() for k in label_keys):
        cmd = ["luigi", "--module", "tasks", "LabelsFor", "--config", str(config)]
        if overrides:
            cmd += ["--overrides", json.dumps(overrides)]
        if dataset:
            cmd += ["--dataset", str(dataset)]
        raise MissingInputs(f"the label shards of config {config} are not built "
                            f"(dataset {reqs['train'].root()}): run "
                            f"`{' '.join(shlex.quote(c) for c in cmd)}` first")
    stats = [k for k in reqs if k not in label_keys + ("init",) and not reqs[k].complete()]
    if stats:
        raise MissingInputs(f"{', '.join(stats)} of config {config} not built: run "
                            + " and ".join(f"`{_luigi_command(reqs[k])}`" for k in stats) + " first")
    if "init" in reqs and not (reqs["init"].run_dir() / "best.pt").exists():
        coarse = reqs["init"]
        raise MissingInputs(f"{arch} starts from {coarse.run_dir() / 'best.pt'}, which does not exist: "
                            f"train {coarse.arch} config {coarse.config} first (Luigi "
                            f"{coarse.get_task_family()}, or this module with --arch {coarse.arch}"
                            f"{' and the same --overrides' if overrides else ''})")
    data, init = task.training_inputs()
    return task, data, init


def _check_same_inputs(data, run_dir, init):
    """Every rank must train on the same shards: compare a digest of what each one found."""
    digest = hashlib.sha256(json.dumps([data["train"], data["val"], data["mean_L"], str(run_dir), init,
                                        data.get("class_weights")], default=str).encode()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError("the ranks found different shards / run folders (the dataset or work "
                           "dir changed under them, or they see different file systems)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m train.distributed",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=int, required=True, help="experiment config number")
    ap.add_argument("--overrides", default="{}", help='JSON dict of config keys to change, e.g. {"lr": 1e-4}')
    ap.add_argument("--dataset", default="", help="dataset root ('' = luigi.cfg [colorize] dataset)")
    ap.add_argument("--arch", choices=ARCHS, default="fcn32s")
    ap.add_argument("--work-dir", default=None,
                    help="root of every output (default: luigi.cfg [colorize] work_dir)")
    ap.add_argument("--run-dir", default=None, help="run folder (default: the Luigi task's, under WORK/runs)")
    ap.add_argument("--device", default=None, help="auto | cpu (default: luigi.cfg [colorize] device)")
    ap.add_argument("--loader-workers", type=int, default=None,
                    help="DataLoader workers per rank (default: luigi.cfg [colorize] loader_workers)")
    ap.add_argument("--stop-after", type=int, default=None, help="end after this many iterations (resumable)")
    ap.add_argument("--no-sync-bn", action="store_true", help="keep per-rank BatchNorm statistics")
    args = ap.parse_args(argv)
    try:
        overrides = json.loads(args.overrides)
        if not isinstance(overrides, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        ap.error(f"--overrides {args.overrides!r}: {e}")

    import luigi
    from pipeline.config import ConfigError
    if args.work_dir:
        config = luigi.configuration.get_config()
        if not config.has_section("colorize"):
            config.add_section("colorize")
        config.set("colorize", "work_dir", str(args.work_dir))
    import tasks
    machine = tasks.colorize()
    device = args.device or machine.device
    workers = machine.loader_workers if args.loader_workers is None else args.loader_workers
    rank_env = int(os.environ.get("RANK", "0"))
    try:
        task, data, init = task_inputs(args.config, overrides, args.dataset, args.arch)
    except (MissingInputs, ConfigError) as e:
        if rank_env == 0:
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    run_dir = Path(args.run_dir) if args.run_dir else task.run_dir()

    from pipeline.atomic import write_text_atomic
    from .loop import fit
    rank, world, dev = setup(device)
    log = partial(print, flush=True) if rank == 0 else (lambda *a, **k: None)
    try:
        if world > 1:
            _check_same_inputs(data, run_dir, init)
        log(f"[train.distributed] {args.arch} config {args.config} on {world} process(es) "
            f"({dist.get_backend() if world > 1 else 'no process group'}, {dev}): {run_dir}")
        result = fit(run_dir, task.cfg, args.arch, data, init_checkpoint=init, device=dev,
                     loader_workers=workers, log=log, stop_after=args.stop_after,
                     distributed=world > 1, sync_bn=not args.no_sync_bn)
        if rank == 0 and result["complete"]:
            write_text_atomic(run_dir / "done.json", json.dumps(result, indent=1, default=float))
        barrier()
    finally:
        teardown()
    return result


if __name__ == "__main__":
    main()
