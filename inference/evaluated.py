"""What an evaluation scored: the record metrics.json keeps under "evaluated_on", how it is
said in one phrase, and which of a run's evaluations stands for it.  No torch here (`runs`
reads these records for hundreds of runs).

A record is one of
  {"split": "val", "dataset": "/data/photos", ...}     a split of a dataset
  {"folder": "/data/test-photos", ...}                 every image below a folder
with "n_images", "n_skipped", "skip_reasons" ({reason: count}), "skipped" ([[path, reason,
detail], ...]) and "held_out": False only for the run's own training split (config 101's
default evaluation is on its training photos: a sanity check, not a held-out score).
"""
from pathlib import Path

_COUNTS = ("n_images", "n_skipped", "skip_reasons", "skipped")


def evaluation_record(where: dict, summary: dict, held_out: bool) -> dict:
    """where: {"folder": path} or {"dataset": root, "split": name}; summary: the Lab shards'
    counts (tasks.summarise_split: n_images, n_skipped, skip_reasons, skipped)."""
    return {**where, **{k: summary[k] for k in _COUNTS}, "held_out": bool(held_out)}


def describe_evaluation(rec, short: bool = False) -> str:
    """'4 images of split val of photos', 'folder test-photos (12 images, 2 skipped: ...)';
    short: 'val (4)', 'folder test-photos (12)'.  '?' for an evaluation without a record (made
    before records were kept)."""
    if not rec:
        return "?"
    n = rec.get("n_images", "?")
    if "folder" in rec:
        what = f"folder {Path(rec['folder']).name}"
    else:
        what = f"{rec.get('split', '?')}" + ("" if short else f" split of {Path(rec.get('dataset', '?')).name}")
    if short:
        return f"{what} ({n})"
    skipped = ""
    if rec.get("n_skipped"):
        reasons = ", ".join(f"{k} {v}" for k, v in rec.get("skip_reasons", {}).items())
        skipped = f", {rec['n_skipped']} skipped: {reasons}"
    return f"{what} ({n} images{skipped})"


def headline(evaluations: list):
    """The evaluation that stands for a run (oldest first in `evaluations`, each with its
    "evaluated_on" record): the latest held-out one, else the latest."""
    held_out = [e for e in evaluations if (e.get("evaluated_on") or {}).get("held_out")]
    chosen = held_out or evaluations
    return chosen[-1] if chosen else None


def check_same_gmm(gmm_path, run_gmm: dict, run_dir) -> None:
    """Label shards made with the GMM file gmm_path must use the run's own clusters (run_gmm:
    the arrays its inputs.json holds); a dataset changed since the run trained (another GMM
    sample) gives other clusters: a one-line ValueError then, not scores against wrong labels."""
    import numpy as np
    from pipeline.gmm import load_gmm
    built = load_gmm(gmm_path)
    if any(np.shape(built[k]) != np.shape(run_gmm[k]) or not np.allclose(built[k], run_gmm[k], atol=1e-6)
           for k in ("weights", "means", "covariances")):
        raise ValueError(f"the GMM of {run_dir}'s dataset as it is now ({gmm_path}) is not the one the run "
                         f"trained with (its dataset changed since): its labels cannot score this run")


def as_target(on):
    """What a user's SPLIT|DIR names: None, a folder (an existing directory: its absolute Path)
    or a split name (str).  Decided once, where the user's value comes in: a split name the code
    derives (a config's val_split, e.g. 'train') stays a split even where a folder of that name
    lies in the current directory (the repository's own train/)."""
    if on is None or isinstance(on, Path):
        return on
    return Path(on).resolve() if Path(on).is_dir() else str(on)
