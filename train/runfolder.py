"""Where a run starts: resume from its latest readable checkpoint, or start fresh.

Called by train.fit on rank 0 while it holds the run folder's lock (README "One writer
per run folder"): a complete run is returned as it is; an unreadable checkpoint.pt falls
back to checkpoint.prev.pt (train.checkpoint.latest_checkpoint); a run that starts from
iteration 0 first removes what an earlier attempt wrote; a deleted best.pt is rebuilt from
the checkpoint when that holds the best weights, else the run restarts.
"""
import json
import shutil
from pathlib import Path

from .checkpoint import latest_checkpoint, save_checkpoint, shape_problem
from .runlog import plain

# cfg keys that may change between a run and its resumption (extend / re-space a run);
# any other difference means a different experiment and is refused.
RESUMABLE_CHANGES = ("max_iteration", "interval_validate", "config", "init_config")
# what an earlier attempt of a run wrote, removed when the run starts again from iteration 0;
# done.json first (see _clear_earlier_attempt); eval-* folders (Evaluate of the old best.pt) too
EARLIER_ATTEMPT = ("done.json", "best.pt", "checkpoint.pt", "checkpoint.prev.pt", "log.csv", "loss.png",
                   "iou.png", "tiles", "tb")
RESUME_ONLY = ("optimizer", "rng", "rng_ranks", "since_validation")   # checkpoint.pt keys best.pt lacks


def check_resume(ckpt, cfg, settings):
    if ckpt.get("settings") != settings:
        old = {k: v for k, v in (ckpt.get("settings") or {}).items() if k != "gmm"}
        raise ValueError(f"checkpoint is for {old}, this run is "
                         f"{ {k: v for k, v in settings.items() if k != 'gmm'} }: use another run folder")
    old, new = ckpt.get("cfg", {}), plain(cfg)
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k))
    if changed:
        raise ValueError(f"cannot resume: config keys {changed} differ from the checkpoint's "
                         f"({ {k: old.get(k) for k in changed} }); use another run folder")


def _clear_earlier_attempt(run_dir, log):
    """A run that starts from iteration 0 starts with empty logs: remove what an earlier
    attempt wrote.  done.json goes first, so a crash half-way leaves a run that is not
    complete, and has no checkpoint, so its next start clears the rest."""
    removed = []
    for path in [run_dir / name for name in EARLIER_ATTEMPT] + sorted(run_dir.glob("eval-*")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(path.name + "/")
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(path.name)
    if removed:
        log(f"{run_dir} starts from iteration 0: removed {', '.join(removed)} of an earlier attempt")


def _rebuild_best(ckpt, source, best_path, log) -> bool:
    """best.pt is missing although `ckpt` records a best validation: rewrite it from ckpt
    when ckpt is that validation's checkpoint; False when its weights are lost."""
    if ckpt["iteration"] != ckpt["best_iteration"]:
        log(f"{best_path} is missing and no checkpoint holds its weights (iteration "
            f"{ckpt['best_iteration']}): the best weights are lost, restarting the run from iteration 0")
        return False
    save_checkpoint(best_path, {k: v for k, v in ckpt.items() if k not in RESUME_ONLY})
    log(f"{best_path} was missing; rebuilt from {source.name} (iteration {ckpt['iteration']}, the best)")
    return True


def read_done(run_dir):
    """A run folder's done.json (the dict fit returned), or None when it is missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / "done.json").read_text())
    except (OSError, ValueError):
        return None


def start_point(run_dir, cfg, settings, log, shapes=None):
    """Rank 0, holding the run folder's lock: where this session starts.  Returns
    ({"checkpoint": file to resume from or None (iteration 0), "done": the finished
    result when there is nothing to train, else None}, the checkpoint dict or None).
    shapes: (model shapes, optimiser parameter shapes), see checkpoint.shape_problem: a
    checkpoint of this run whose tensors differ is corrupt (the previous one is used)."""
    def check(ckpt):          # another run's checkpoint is refused by check_resume below
        if shapes is not None and ckpt.get("settings") == settings:
            return shape_problem(ckpt, *shapes)
        return None
    ckpt, source = latest_checkpoint(run_dir / "checkpoint.pt", log, check)
    best_path = run_dir / "best.pt"
    if ckpt is not None:
        check_resume(ckpt, cfg, settings)
        complete = ckpt["iteration"] >= int(cfg["max_iteration"])
        if complete and ckpt["best_iteration"] is None and not best_path.exists():
            raise ValueError(f"{run_dir} ran {ckpt['iteration']} iterations without a finite validation "
                             f"loss, so it has no best.pt: this config diverges (try a lower lr)")
        best_lost = ckpt["best_iteration"] is not None and not best_path.exists() \
            and not _rebuild_best(ckpt, source, best_path, log)
        if best_lost:
            ckpt = None
        elif complete and (done := read_done(run_dir)) is not None:   # else resumed at the end: writes it
            return {"checkpoint": None, "done": done}, None
        elif not complete:
            (run_dir / "done.json").unlink(missing_ok=True)     # max_iteration raised: not done
    if ckpt is None:
        _clear_earlier_attempt(run_dir, log)
        return {"checkpoint": None, "done": None}, None
    return {"checkpoint": str(source), "done": None}, ckpt
