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
  data_split the split list the row's figures come from: the config's train_split for
             'train' rows, its val_split for 'valid' rows (config 101 validates on 'train':
             its 'valid' rows are not held-out figures).  Logs written before this column
             keep their own header (append_rows and truncate_log follow the file's header).
"""
import csv
import json
import os
import subprocess
from pathlib import Path

from pipeline.atomic import write_text_atomic

LOG_COLUMNS = ("iteration", "epoch", "split", "loss", "acc", "acc_cls", "mean_iu", "fwavacc",
               "lr", "elapsed_s", "data_split")


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


def _header(path) -> tuple:
    """The columns of an existing log.csv (an older run's may lack some), else LOG_COLUMNS."""
    try:
        with open(path, newline="") as f:
            return tuple(next(csv.reader(f), None) or LOG_COLUMNS)
    except FileNotFoundError:
        return LOG_COLUMNS


def append_rows(path, rows):
    new = not path.exists() or path.stat().st_size == 0
    columns = LOG_COLUMNS if new else _header(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(columns)
        for row in rows:
            w.writerow([_format(row.get(c, "")) for c in columns])
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
        columns = _header(path)
        lines = [",".join(columns)] + [",".join(r.get(c) or "" for c in columns) for r in kept]
        write_text_atomic(path, "\n".join(lines) + "\n")


def write_config(run_dir, record: dict) -> None:
    """config.json: the resolved config, architecture, data sizes, git revision, device."""
    write_text_atomic(Path(run_dir) / "config.json", json.dumps(plain(record), indent=2) + "\n")


def split_label(cfg: dict) -> str:
    """What a run's validation figures are measured on, for every place that shows them:
    "val on 'small'", or "val on 'train' (the training photos)" when the config validates on
    its training split (config 101, the demo: not held-out figures)."""
    val, train = cfg.get("val_split", "?"), cfg.get("train_split", "?")
    return f"val on '{val}'" + (" (the training photos)" if val == train else "")
