"""What a run folder records besides checkpoints: config.json and log.csv.

log.csv columns (fixed, one 'train' and one 'valid' row per validation):
  iteration  optimiser steps done
  epoch      0-based index of the pass over the training set in progress
  split      'train': averaged over the steps since the previous validation (loss =
             mean of the per-step objective, incl. class weights if any; scores from
             the confusion matrix of those steps, in train mode: dropout on).
             'valid': the whole validation split in eval mode; loss = plain KL.
  loss       KL(target || softmax(scores)), summed over K (divided by K with kl_reduction
             "mean_k", as the original), mean over pixels and images
  acc, acc_cls, mean_iu, fwavacc   argmax-cluster scores (train.metrics)
  lr         learning rate of the first parameter group
  elapsed_s  wall-clock seconds since the run started, summed over resumed sessions
"""
import csv
import json
import os
import subprocess
from pathlib import Path

from pipeline.atomic import write_text_atomic

LOG_COLUMNS = ("iteration", "epoch", "split", "loss", "acc", "acc_cls", "mean_iu", "fwavacc",
               "lr", "elapsed_s")


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


def plain(obj):
    """JSON round trip: plain Python types only (what weights_only loading accepts)."""
    return json.loads(json.dumps(obj, default=str))


def _format(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


def append_rows(path, rows):
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(LOG_COLUMNS)
        for row in rows:
            w.writerow([_format(row[c]) for c in LOG_COLUMNS])
        f.flush()
        os.fsync(f.fileno())


def truncate_log(path, iteration):
    """Drop rows logged after the checkpoint we resume from (their steps are redone)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["iteration"]) <= iteration]
    if len(kept) != len(rows):
        lines = [",".join(LOG_COLUMNS)] + [",".join(r[c] for c in LOG_COLUMNS) for r in kept]
        write_text_atomic(path, "\n".join(lines) + "\n")


def write_config(run_dir, record: dict) -> None:
    """config.json: the resolved config, architecture, data sizes, git revision, device."""
    write_text_atomic(Path(run_dir) / "config.json", json.dumps(plain(record), indent=2) + "\n")
