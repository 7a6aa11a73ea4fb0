"""Distributed data-parallel training (DDP) with torchrun.

    luigi --module tasks PrepareRun --config 14 --arch fcn32s     # prints the run folder
    torchrun --nproc_per_node 4 -m train.distributed --run-dir work/runs/fcn32s-c14-<sig>

Every rank reads the run's inputs from <run>/inputs.json (pipeline.run_inputs: label
shard pairs, mean lightness, GMM, class weights and, for FCN-16s/8s, the coarser run's
best.pt), written by the Luigi task PrepareRun once they all exist; then it runs
train.fit.fit(..., distributed=True).  Nothing here knows about Luigi.  fit writes
done.json in the run folder at the end, so Luigi sees the training task as complete
(FCN-16s can then start from it).  Run without torchrun (no WORLD_SIZE in the
environment), the module trains in one process.

Semantics (see also train/fit.py):
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
  stop         SIGINT/SIGTERM (torchrun forwards them to every rank): the ranks agree at the
               next loss read-back (every train.steps.LOG_EVERY steps) and stop together at
               that iteration, rank 0 writes checkpoint.pt, and every rank exits with
               train.stop.EXIT_STOPPED (75) (torchrun itself exits 1, reporting the
               signal); a second signal ends a rank at once.
  resume       every rank loads checkpoint.pt; iteration, epoch and position count global
               steps and images, so a run can resume with another number of ranks (then
               only the dropout masks of ranks > 0 differ from an uninterrupted run).
  backend      nccl (one GPU per rank, cuda:LOCAL_RANK) when CUDA is available, else gloo
               on CPU; --device cpu forces gloo on CPU.
"""

import argparse
import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import torch.distributed as dist

from pipeline.run_inputs import RunInputs, RunInputsError

from .ddp import barrier, setup, teardown
from .fit import fit
from .stop import TrainingStopped


def _check_same_inputs(inputs, run_dir):
    """Every rank must train on the same shards: compare a digest of what each one read."""
    digest = hashlib.sha256(json.dumps([inputs.train, inputs.val, inputs.mean_L, str(run_dir),
                                        inputs.init_checkpoint, inputs.class_weights],
                                       default=str).encode()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError("the ranks read different run inputs (the run folder changed under "
                           "them, or they see different file systems)")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m train.distributed",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True,
                    help="run folder holding inputs.json (luigi --module tasks PrepareRun ... writes it)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers per rank (default 2)")
    ap.add_argument("--stop-after", type=int, default=None, help="end after this many iterations (resumable)")
    ap.add_argument("--no-sync-bn", action="store_true", help="keep per-rank BatchNorm statistics")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    try:
        inputs = RunInputs.load(run_dir)
    except RunInputsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    rank, world, dev = setup(args.device)
    log = partial(print, flush=True) if rank == 0 else (lambda *a, **k: None)
    try:
        if world > 1:
            _check_same_inputs(inputs, run_dir)
        log(f"[train.distributed] {inputs.arch} on {world} process(es) "
            f"({dist.get_backend() if world > 1 else 'no process group'}, {dev}): {run_dir}")
        result = fit(run_dir, inputs, device=dev, loader_workers=args.loader_workers, log=log,
                     stop_after=args.stop_after, distributed=world > 1, sync_bn=not args.no_sync_bn)
        barrier()
    except TrainingStopped as e:          # saved, and its line printed by rank 0: README exit codes
        raise SystemExit(e.exit_code) from None
    finally:
        teardown()
    return result


if __name__ == "__main__":
    main()
