"""`colorize-fcn runs`: one row per run folder under <work>/runs/, read from its small files.

A row comes from inputs.json (arch, config, dataset, the shards it trains on),
config.json (the same when inputs.json is gone), log.csv (iterations done, best
validation loss of an unfinished run), done.json (the finished run's figures) and
<run>/eval-*/metrics.json (evaluation AuC, and what it was measured on: the latest
held-out evaluation -- a val split or a folder -- is shown, else the latest).  Nothing here imports torch or opens a
checkpoint: `colorize-fcn runs` lists 300 runs in ~1.3 s here, start-up included.

State of a run:
  finished   done.json and best.pt exist
  running    another process holds the run's lock (<run>/.lock, pipeline/runlock.py)
             or is writing one of its files (a live hidden temporary, pipeline/atomic.py)
  stopped    trained for a while, not finished, nobody training it (resumes on a rerun)
  prepared   inputs.json only: training has not started
"""
import csv
import json
import os
import sys
import time
from pathlib import Path

from pipeline.atomic import TMP_TAG, owner_alive
from pipeline.config import ConfigError, resolve_config
from pipeline.progress import format_seconds
from pipeline.run_inputs import INPUTS_FILE
from pipeline.runlock import holder as lock_holder
from train.best import CRITERIA, is_better

from .disk import RESUME_CHECKPOINTS, disk_usage, human_size

from .evaluated import describe_evaluation, headline

EVAL_METHOD = "model/annealed"  # the AuC shown: the network's posteriors, annealed-mean decoder
COLUMNS = ("arch", "config", "overrides", "dataset", "iterations", "best", "state", "auc", "auc_on", "size", "run")


def default_work_dir() -> str:
    """luigi.cfg [colorize] work_dir (as the Luigi tasks read it), else 'work'."""
    import luigi.configuration
    return luigi.configuration.get_config().get("colorize", "work_dir", "work")


def run_folders(work) -> list:
    """Every folder under <work>/runs/, sorted by name."""
    runs = Path(work) / "runs"
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if runs.is_dir() else []


# ----------------------------------------------------------------------------- in use
def live_temporaries(folder) -> list:
    """Hidden temporaries (pipeline/atomic.py) in `folder` whose writer is alive or on
    another host: a file being written right now."""
    try:
        return sorted(e.name for e in Path(folder).iterdir()
                      if e.name.startswith(".") and TMP_TAG in e.name and owner_alive(e.name))
    except OSError:
        return []


def busy_reason(folder, min_age_s: float = 0.0, now: float = None, builds=()):
    """Why `folder` (searched recursively) is kept, or None, starting with the kind of reason:
    "in use: locked by ..." (a held run lock), "in use: being written (...)" (a live temporary),
    "being built: ..." (a file written since the oldest of `builds`, the live builds of
    pipeline.builds.live_builds, started) or "recent: ..." (a file younger than min_age_s)."""
    now = time.time() if now is None else now
    for path, dirs, files in os.walk(folder):
        holder = lock_holder(path)
        if holder:
            return f"in use: locked by {holder}"
        writing = live_temporaries(path)
        if writing:
            return f"in use: being written ({writing[0]})"
        for name in files:
            try:
                mtime = os.lstat(os.path.join(path, name)).st_mtime
            except OSError:
                continue
            rel = os.path.relpath(os.path.join(path, name), folder)
            if builds and mtime >= builds[0]["started"]:
                b = builds[0]
                return (f"being built: {rel} written since the live build {b['host']}:{b['pid']} started "
                        f"{format_seconds(now - b['started'])} ago (logs/{b['marker']})")
            if now - mtime < min_age_s:
                return (f"recent: {rel} written {format_seconds(now - mtime)} ago, younger than "
                        f"--min-age {format_seconds(min_age_s)}")
    return None


# ----------------------------------------------------------------------------- one run
def _read_json(path, problems):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        problems.append(f"cannot read {Path(path).name}: {' '.join(str(e).split())}")
        return None


def _read_log(path, problems) -> list:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        problems.append(f"cannot read log.csv: {' '.join(str(e).split())}")
        return []


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def best_from_log(rows, best_by="val_loss") -> tuple:
    """(validation loss, iteration) of the best validation of log.csv rows, as training picks
    it (cfg best_by, train.best: the first of equal scores wins); (None, None) if none."""
    best, score = (None, None), None
    column = CRITERIA[best_by][0]
    for r in rows:
        value = _number(r.get(column))
        if r.get("split") == "valid" and is_better(value, score, best_by):
            best, score = (_number(r.get("loss")), int(_number(r.get("iteration")) or 0)), value
    return best


def overrides_of(cfg: dict):
    """The keys of a run's resolved cfg that differ from its numbered config's today, or None
    when that config is no longer defined."""
    try:
        numbered = resolve_config(cfg.get("config"))
    except ConfigError:
        return None
    plain = json.loads(json.dumps(numbered))
    return {k: v for k, v in sorted(cfg.items()) if k != "config" and plain.get(k, object()) != v}


def evaluations(run_dir) -> list:
    """[{dir, temperature, n_images, auc (of EVAL_METHOD), evaluated_on (what it scored: split or
    folder, inference.evaluated), on (that in short), written}] of <run>/eval-*/metrics.json,
    oldest first."""
    out = []
    for path in Path(run_dir).glob("eval-*/metrics.json"):
        try:
            m = json.loads(path.read_text())
            rec = {k: v for k, v in (m.get("evaluated_on") or {}).items() if k != "skipped"} or None
            out.append({"dir": path.parent.name, "temperature": m.get("temperature"),
                        "n_images": m.get("n_images"), "auc": m["methods"][EVAL_METHOD]["auc"],
                        "evaluated_on": rec, "on": describe_evaluation(rec, short=True),
                        "written": path.stat().st_mtime})
        except (OSError, ValueError, KeyError, TypeError):
            out.append({"dir": path.parent.name, "auc": None, "written": 0, "problem": "unreadable metrics.json"})
    return sorted(out, key=lambda e: e["written"])


def read_run(run_dir) -> dict:
    """Everything `runs` shows about one run folder, from its small files (no torch).
    Unreadable files become one-line entries in "problems", never an exception."""
    run_dir, problems = Path(run_dir), []
    inputs = _read_json(run_dir / INPUTS_FILE, problems) or {}
    config = _read_json(run_dir / "config.json", problems) or {}
    done = _read_json(run_dir / "done.json", problems)
    rows = _read_log(run_dir / "log.csv", problems)
    cfg = inputs.get("cfg") or config.get("cfg") or {}
    if not inputs and not config:
        problems.append("no inputs.json or config.json")
    finished = done is not None and (run_dir / "best.pt").exists()
    holder = lock_holder(run_dir)
    writing = live_temporaries(run_dir)
    state = ("finished" if finished else "running" if holder or writing
             else "stopped" if rows or (run_dir / "checkpoint.pt").exists() else "prepared")
    if done is not None:
        iterations, best = done.get("iterations"), (done.get("best_val_loss"), done.get("best_iteration"))
    else:                              # a stopped run resumes from the checkpoint of its last validation
        resumes = state == "stopped"
        iterations = _last_iteration([r for r in rows if r.get("split") == "valid"] if resumes else rows)
        best = best_from_log(rows, cfg.get("best_by", "val_loss"))
    evals = evaluations(run_dir)
    return {"run": run_dir.name, "path": str(run_dir), "arch": inputs.get("arch") or config.get("arch"),
            "config": cfg.get("config"), "overrides": overrides_of(cfg) if cfg else None,
            "dataset": inputs.get("dataset") or config.get("dataset"),
            "iterations": iterations, "max_iteration": cfg.get("max_iteration"),
            "best_val_loss": best[0], "best_iteration": best[1], "val_split": cfg.get("val_split"),
            "validates_on_train": bool(cfg) and cfg.get("val_split") == cfg.get("train_split"),
            "finished": finished, "state": state,
            "locked_by": holder, **_shown_evaluation(evals), "evaluations": evals,
            "init_checkpoint": inputs.get("init_checkpoint"), "problems": problems,
            "size_bytes": disk_usage(run_dir)[0],
            "resume_checkpoint_bytes": sum(disk_usage(run_dir / n)[0] for n in RESUME_CHECKPOINTS
                                           if (run_dir / n).is_file())}


def _shown_evaluation(evals) -> dict:
    """The AuC a row shows and what it was measured on: the latest held-out evaluation (a val
    split or a folder), else the latest (inference.evaluated.headline)."""
    shown = headline(evals)
    return {"auc": shown["auc"] if shown else None, "auc_on": shown.get("on") if shown else None}


def _last_iteration(rows) -> int:
    return int(_number(rows[-1].get("iteration")) or 0) if rows else 0


def list_runs(work) -> list:
    return [read_run(p) for p in run_folders(work)]


# ----------------------------------------------------------------------------- table
def _cell(row, column) -> str:
    if column == "overrides":
        o = row["overrides"]
        return "?" if o is None else (json.dumps(o, separators=(",", ":")) if o else "-")
    if column == "dataset":
        return Path(row["dataset"]).name if row["dataset"] else "?"
    if column == "iterations":
        return f"{row['iterations']}/{row['max_iteration'] if row['max_iteration'] is not None else '?'}"
    if column == "best":
        loss = row["best_val_loss"]
        on = f"{row['val_split']}{'=train!' if row['validates_on_train'] else ''}"
        return "-" if not isinstance(loss, (int, float)) else f"{loss:.4f} @{row['best_iteration']} on {on}"
    if column == "auc":
        return "-" if not isinstance(row["auc"], (int, float)) else f"{row['auc']:.2f}"
    if column == "auc_on":
        return row["auc_on"] or "-"
    if column == "state":
        return row["state"] + (" !" if row["problems"] else "")
    if column == "size":
        return human_size(row["size_bytes"])
    value = row[column]
    return "?" if value is None else str(value)


def format_table(rows) -> str:
    header = {"arch": "ARCH", "config": "CONFIG", "overrides": "OVERRIDES", "dataset": "DATASET",
              "iterations": "ITER", "best": "BEST VAL @ITER ON SPLIT", "state": "STATE",
              "auc": f"AUC {EVAL_METHOD}", "auc_on": "AUC ON", "size": "SIZE", "run": "RUN"}
    table = [[header[c] for c in COLUMNS]] + [[_cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


# ----------------------------------------------------------------------------- command
def add_parser(sub) -> None:
    p = sub.add_parser("runs", help="list the training runs of a work dir",
                       description="One row per run folder under <work>/runs/: architecture, config "
                                   "number, overrides, dataset, iterations done/total, best validation "
                                   "loss, its iteration and split ('=train!': the run validates on its "
                                   f"training photos, not held-out ones), state, evaluation AuC ({EVAL_METHOD}, %%) and "
                                   "what it was measured on (split or folder, images: the latest held-out evaluation, "
                                   "a val split or a folder, else the latest), size on disk (1000-based units).",
                       epilog="exit status: 0 listed (also when there are no runs), 2 bad arguments "
                              "or no such work dir")
    p.add_argument("--work-dir", default=None, help="default: luigi.cfg [colorize] work_dir")
    p.add_argument("--json", action="store_true", help="one JSON list of rows instead of the table")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args) -> int:
    work = Path(args.work_dir or default_work_dir())
    if not work.is_dir():
        sys.stderr.write(f"colorize-fcn: error: work dir {work} does not exist\n")
        return 2
    rows = list_runs(work)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        sys.stderr.write(f"colorize-fcn: no runs under {work / 'runs'}\n")
        return 0
    print(format_table(rows))
    for r in rows:
        for problem in r["problems"]:
            sys.stderr.write(f"colorize-fcn: warning: {r['run']}: {problem}\n")
    return 0
