"""Helpers for distributed data-parallel training (one process per GPU, torchrun).

train.fit uses them when it runs as one rank of a process group; train.distributed
is the torchrun entry point.  See train/distributed.py for the semantics.
"""
import hashlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from pipeline.progress import say

from .rng import seed_everything, set_rng_states


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


def mean_over_ranks(value) -> float:
    """All-reduced mean of a scalar tensor over the default process group, as a float."""
    value = value.detach().float().clone()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


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


def restore_rng(ckpt: dict, seed: int, rank: int, world_size: int, loader_generator, log=say):
    """Restore this rank's RNGs from a checkpoint: its own states when the checkpoint was
    written by as many ranks, else rank 0's states (rank 0) / fresh streams (other ranks)."""
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


def from_rank0(value):
    """Rank 0's `value` on every rank (a pickled broadcast)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn, rank, world_size):
    """fn() run by rank 0 alone; its result, or its error (one line), on every rank."""
    if world_size == 1:
        return fn()
    if rank != 0:
        kind, value = from_rank0(None)
        if kind == "error":
            raise RuntimeError(f"rank 0: {value}")
        return value
    try:
        value = fn()
    except Exception as e:
        from_rank0(("error", f"{type(e).__name__}: {e}"))
        raise
    from_rank0(("ok", value))
    return value
