"""`colorize-fcn gc`: delete the caches (Lab and label shards, manifests, GMMs, mean
lightness, priors) that no kept run uses; runs only when asked.

Kept runs: every run folder under <work>/runs/, or with --run / --config / --dataset only
the matching ones, plus, always, every unfinished or busy run (it resumes from its
caches) and the coarser run a kept unfinished run starts from.  A finished run does not
need its caches to be complete, to colorize or to be listed, so the caches of runs that
are not kept are deleted while the runs stay (Evaluate of such a run needs its caches
again: `luigi --module tasks PrepareRun --config N --arch A ...` rebuilds them).

What a kept run uses (read from its inputs.json; no signature is recomputed here, so
this module does not need the Luigi graph, tasks.py):
  lab/s<S>/<sig>.h5                   the Lab shards its train and val pairs name
  labels/<setting>/s<S>/<sig>.h5      the label shards its pairs name
  lab/s<S>/<split>-<sig>.json         Lab manifests whose shards are all kept
  labels/<setting>/s<S>/<split>-*.json  label manifests whose pairs are all kept
  labels/<setting>/s<S>/prior-<split>-*.json  class priors beside a kept manifest of that split
  gmm/s<S>/<binning>-k<K>-<g>.npz     the GMM of a label setting folder <binning>-k<K>-lp<f>-g<g>
                                      that keeps a file
  stats/s<S>/mean-L-<sig>.json        mean lightness equal to a kept run's mean_L (same size)
plus anything under a --keep PATH.  Files of other names in these folders, and every
folder of <work> but lab/, labels/, gmm/, stats/ and runs/ (e.g. the fingerprint cache),
are never touched.

Kept whatever the runs use (listed as plan.busy, each with its reason, runs.busy_reason):
"in use" -- a folder in which a process holds a run lock or a writer is alive behind a
hidden temporary (pipeline/atomic.py); "being built" -- a folder holding a file written since
a live Luigi run of this work dir started (pipeline/builds.py: it may be a cache that run made
for a run whose inputs.json does not exist yet); "recent" -- a file written less than
--min-age minutes ago (the same, for builds gc cannot see).  Temporaries of dead writers are
garbage and go with the rest.  --checkpoints: also the resume checkpoints of finished runs.

Deleting: every item is first renamed to a hidden temporary name in its own folder
(atomic, no cross-device move; a reader never sees half a folder), then removed.  If gc
dies in between, the next gc (or the next task writing in that folder) removes the
leftovers.
"""
import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.atomic import TMP_TAG, temporary_name
from pipeline.builds import live_builds
from pipeline.run_inputs import INPUTS_FILE, resolve_path
from pipeline.runlock import holder as lock_holder

from .disk import RESUME_CHECKPOINTS, disk_usage, human_size
from .runs import busy_reason, default_work_dir, live_temporaries, read_run, run_folders

CACHE_ROOTS = ("lab", "labels", "gmm", "stats")


class GCError(ValueError):
    """A request gc refuses (nothing was deleted); the message is one line."""


@dataclass
class Item:
    path: str          # relative to the work dir; folders end with '/'
    kind: str          # what it is, in words (_kind)
    size: int          # bytes (file sizes, summed over a folder)
    files: int


@dataclass
class Plan:
    work_dir: str
    kept_runs: list                       # run folder names whose caches are kept
    delete: list = field(default_factory=list)     # Items
    busy: list = field(default_factory=list)       # {"path", "reason"}
    kept_files: int = 0
    kept_size: int = 0
    warnings: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(i.size for i in self.delete)


# ----------------------------------------------------------------------------- what runs use
def _inside_work(path, work: Path):
    """`path` (a reference from inputs.json) relative to the work dir, or None.  A relative
    reference was relative to the directory Luigi ran in; when the work dir has moved since,
    the part from its lab/ or labels/ component on is used (file names are signatures)."""
    p = Path(path)
    for candidate in (p, Path.cwd() / p):
        try:
            return candidate.resolve().relative_to(work.resolve())
        except ValueError:
            pass
    parts = p.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in CACHE_ROOTS:
            return Path(*parts[i:])
    return None


def select_runs(work: Path, runs=(), configs=(), dataset=None, delete_runs=False):
    """(names of the runs whose caches are kept, names of the runs to delete, warnings).
    No selection keeps every run.  Unfinished and locked runs are always kept; the coarser
    run an unfinished kept run starts from is never deleted (its caches are not needed)."""
    rows = {r["run"]: r for r in (read_run(p) for p in run_folders(work))}
    want_ds = str(Path(dataset).resolve()) if dataset else None
    unknown = sorted(set(runs) - set(rows))
    if unknown:
        raise GCError(f"no run folder {unknown[0]} under {work / 'runs'}")
    selecting = bool(runs or configs or dataset)
    if delete_runs and not selecting:
        raise GCError("--delete-runs needs --run, --config or --dataset to say which runs to keep")
    chosen = {name for name, r in rows.items()
              if not selecting or ((name in runs or r["config"] in configs or not (runs or configs))
                                   and (want_ds is None or r["dataset"] == want_ds))}
    asked = " ".join([f"--config {' '.join(map(str, configs))}"] * bool(configs) +
                     [f"--dataset {dataset}"] * bool(dataset) + [f"--run {' '.join(runs)}"] * bool(runs))
    if selecting and not chosen:
        raise GCError(f"no run under {work / 'runs'} matches {asked}; nothing deleted")
    warnings = [f"--config {c} matches no run: its caches are not kept (gc knows a config's caches "
                f"only from its runs' inputs.json; use --keep)" for c in configs
                if not any(rows[n]["config"] == c for n in chosen)]
    warnings += [f"{name}: {p}" for name, r in rows.items() for p in r["problems"]]
    kept = chosen | {name for name, r in rows.items() if not r["finished"] or r["locked_by"]}
    starts_from = {Path(rows[name]["init_checkpoint"]).parent.name for name in kept
                   if rows[name]["init_checkpoint"] and not rows[name]["finished"]}
    doomed = sorted(set(rows) - kept - starts_from) if delete_runs else []
    return sorted(kept), doomed, warnings


def used_shards(work: Path, run_names) -> tuple:
    """({paths of Lab and label shards, relative to work}, {("s<im_size>", mean_L)}, warnings)
    referenced by the inputs.json of the named runs."""
    shards, means, warnings = set(), set(), []
    for name in run_names:
        path = work / "runs" / name / INPUTS_FILE
        try:
            data = json.loads(path.read_text())
            pairs = list(data["train"]) + list(data["val"])
        except FileNotFoundError:
            continue                 # not prepared yet: busy (young) or nothing to keep
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.append(f"{name}: cannot read {INPUTS_FILE} ({' '.join(str(e).split())}): "
                            f"its caches are not kept")
            continue
        for pair in pairs:
            for ref in pair:
                rel = _inside_work(resolve_path(ref, work / "runs" / name), work)
                if rel is not None:
                    shards.add(rel)
        means.add((f"s{data['cfg']['im_size']}", data["mean_L"]))
    return shards, means, warnings


# ----------------------------------------------------------------------------- which files are kept
def _json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _listed(manifest: Path, work: Path):
    """The files a Lab or label manifest names (relative to work), or None when it cannot be
    read (such a manifest is not kept: the task that wrote it rebuilds it when needed)."""
    data, folder = _json(manifest), manifest.parent.relative_to(work)
    try:
        if "shards" in data:                                      # lab/s<S>/<split>-<sig>.json
            return [folder / s["file"] for s in data["shards"]]
        lab = Path("lab") / folder.name                           # labels/<setting>/s<S>/...
        return [p for pair in data["pairs"] for p in (lab / pair["lab"], folder / pair["labels"])]
    except (KeyError, TypeError):
        return None


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and TMP_TAG in name


def _keep_paths(paths, work: Path, warnings: list) -> list:
    """--keep paths relative to work; the others are reported in `warnings` and ignored."""
    out = []
    for p in paths:
        rel = _inside_work(p, work)
        if rel is None or not (work / rel).exists():
            warnings.append(f"--keep {p}: no such file or folder under {work}; ignored")
        else:
            out.append(rel)
    return out


def kept_cache_files(work: Path, shards: set, means: set, keep_paths=()) -> set:
    """The files under lab/, labels/, gmm/, stats/ (relative to work) that are kept: the
    shards, what keep_paths (relative to work) hold, then what follows from them (module
    docstring)."""
    keep = {p for p in shards if (work / p).is_file()}
    for root in CACHE_ROOTS:
        for path in sorted((work / root).rglob("*")) if (work / root).is_dir() else []:
            rel = path.relative_to(work)
            if path.is_file() and not _is_temporary(path.name) and (
                    any(rel == e or e in rel.parents for e in keep_paths) or not _known(rel)):
                keep.add(rel)
    kept_splits = set()          # (label folder, split) of the kept label manifests
    for manifest in [*(work / "lab").glob("s*/*-*.json"), *(work / "labels").glob("*/s*/*-*.json")]:
        listed = None if manifest.name.startswith("prior-") else _listed(manifest, work)
        if listed is not None and all(p in keep for p in listed):
            keep.add(manifest.relative_to(work))
            kept_splits.add((manifest.parent.relative_to(work), _json(manifest).get("split")))
    for prior in (work / "labels").glob("*/s*/prior-*.json"):           # class priors
        folder = prior.parent.relative_to(work)
        if (folder, (_json(prior) or {}).get("split")) in kept_splits:
            keep.add(prior.relative_to(work))
    settings = {(f.parts[1], f.parts[2]) for f in keep if f.parts[0] == "labels" and len(f.parts) == 4}
    for gmm in (work / "gmm").glob("s*/*.npz"):                        # GMMs of kept label settings
        binning_k, _, sig = gmm.stem.rpartition("-")
        if any(s.startswith(binning_k + "-lp") and s.endswith("-g" + sig) and size == gmm.parent.name
               for s, size in settings):
            keep.add(gmm.relative_to(work))
    for stats in (work / "stats").glob("s*/mean-L-*.json"):            # mean lightness
        value = (_json(stats) or {}).get("mean_L")
        if (stats.parent.name, value) in means:
            keep.add(stats.relative_to(work))
    return keep


def _known(rel: Path) -> bool:
    """True for the file names the Luigi tasks write under the cache roots (others are kept)."""
    root, name = rel.parts[0], rel.name
    depth = {"lab": 3, "labels": 4, "gmm": 3, "stats": 3}[root]
    if len(rel.parts) != depth or not rel.parts[depth - 2].startswith("s"):
        return False
    return {"lab": name.endswith((".h5", ".json")), "labels": name.endswith((".h5", ".json")),
            "gmm": name.endswith(".npz"), "stats": name.startswith("mean-L-") and name.endswith(".json")}[root]


# ----------------------------------------------------------------------------- the plan
def _unused(folder: Path, work: Path, keep: set):
    """None when nothing under `folder` is kept (the caller deletes it whole), else the Items
    under it to delete."""
    items, whole = _unused_children(folder, work, keep)
    return None if whole else items


def _unused_children(folder: Path, work: Path, keep: set) -> tuple:
    """(Items to delete among and below folder's entries, True when all of them are unused)."""
    items, whole, writing = [], True, set(live_temporaries(folder))
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or entry.name in writing:   # a link (e.g. to another disk), a live writer
            whole = False
        elif entry.is_dir() and not _is_temporary(entry.name):
            below = _unused(entry, work, keep)
            if below is None:
                items.append(_item(entry, work))
            else:
                items, whole = items + below, False
        elif entry.relative_to(work) in keep:
            whole = False
        else:
            items.append(_item(entry, work))
    return items, whole


def _not_in_use(items, work: Path, min_age_s: float, now: float, plan: Plan, builds=()) -> list:
    """The items none of whose folders is in use (busy_reason): every folder from below the
    cache root (or runs/) down to the item's own.  Each folder in use goes once to plan.busy."""
    reasons, free = {}, []
    for item in items:
        rel = Path(item.path)
        folders = list(reversed(rel.parents))[2:] + ([rel] if item.path.endswith("/") else [])
        for folder in folders:
            if folder not in reasons:
                reasons[folder] = busy_reason(work / folder, min_age_s, now, builds)
            if reasons[folder]:
                break
        else:
            free.append(item)
    plan.busy += [{"path": f"{f}/", "reason": r} for f, r in reasons.items() if r]
    return free


def _resume_checkpoints(work: Path, doomed: set) -> list:
    """Items: checkpoint.pt and checkpoint.prev.pt of every finished run (done.json and best.pt)
    not deleted whole.  A run in use (its lock held, a live writer, a recent file) keeps them:
    _not_in_use checks its folder, and execute() again just before deleting."""
    return [_item(run / name, work) for run in run_folders(work)
            if run.name not in doomed and read_run(run)["finished"]
            for name in RESUME_CHECKPOINTS if (run / name).is_file() and not (run / name).is_symlink()]


def _run_locked(path: Path):
    """'locked by <holder>' when `path` is a resume checkpoint of a run that a process trains now."""
    holder = lock_holder(path.parent) if path.name in RESUME_CHECKPOINTS else None
    return f"in use: locked by {holder}" if holder else None


def _kind(rel: Path, is_dir: bool) -> str:
    """What a deleted item is, in words."""
    root, name = rel.parts[0], rel.name
    if _is_temporary(name):
        return "dead writer's temporary"
    if root == "runs" and name in RESUME_CHECKPOINTS:
        return "resume checkpoint of a finished run"
    if is_dir:
        return {"lab": "Lab shards", "gmm": "GMMs", "stats": "mean lightness", "runs": "run",
                "labels": "label setting" if len(rel.parts) == 2 else "label shards"}[root]
    if root in ("lab", "labels") and name.endswith(".h5"):
        return f"{'Lab' if root == 'lab' else 'label'} shard"
    if root in ("lab", "labels") and name.endswith(".json"):
        return "class prior" if name.startswith("prior-") else f"{'Lab' if root == 'lab' else 'label'} manifest"
    return {"gmm": "GMM", "stats": "mean lightness"}.get(root, "file")


def _item(path: Path, work: Path) -> Item:
    rel = path.relative_to(work)
    size, files = disk_usage(path)
    is_dir = path.is_dir() and not path.is_symlink()
    return Item(f"{rel}/" if is_dir else str(rel), _kind(rel, is_dir), size, files)


def plan_gc(work, runs=(), configs=(), dataset=None, keep_paths=(), delete_runs=False,
            min_age_s: float = 3600.0, now: float = None, checkpoints: bool = False) -> Plan:
    """What gc would delete: the module docstring's rules.  keep_paths: files or folders
    (absolute or relative to work) kept whatever runs use; a caller that knows what a
    config's PrepareRun would use (the Luigi graph) passes those paths here.  checkpoints:
    also the resume checkpoints of finished runs (_resume_checkpoints)."""
    work, now = Path(work), time.time() if now is None else now
    if not work.is_dir():
        raise GCError(f"work dir {work} does not exist")
    kept_runs, doomed, warnings = select_runs(work, runs, configs, dataset, delete_runs)
    shards, means, more = used_shards(work, kept_runs)
    keep = kept_cache_files(work, shards, means, _keep_paths(keep_paths, work, more))
    plan = Plan(str(work), kept_runs, warnings=warnings + more)
    unused = [i for root in CACHE_ROOTS if (work / root).is_dir()     # a root itself stays
              for i in _unused_children(work / root, work, keep)[0]]
    unused += [_item(work / "runs" / name, work) for name in doomed]
    unused += _resume_checkpoints(work, set(doomed)) if checkpoints else []
    plan.delete = _not_in_use(unused, work, min_age_s, now, plan, live_builds(work, now))
    plan.kept_files = len(keep)
    plan.kept_size = sum((work / p).stat().st_size for p in keep if (work / p).is_file())
    return plan


def execute(plan: Plan) -> list:
    """Delete the plan's items: rename each to a hidden temporary beside it, then remove
    them all.  A folder that a process has started to use since the plan (a lock, a live
    writer) is left alone.  Returns one-line errors (items that could not be deleted)."""
    work, errors, renamed = Path(plan.work_dir), [], []
    builds = live_builds(work)
    for item in plan.delete:
        path = work / item.path.rstrip("/")
        tmp = temporary_name(path)
        reason = busy_reason(path, 0, builds=builds) if item.path.endswith("/") else _run_locked(path)
        if reason:
            errors.append(f"not deleted: {path}: {reason}")
            continue
        try:
            os.rename(path, tmp)
            renamed.append((item, tmp))
        except FileNotFoundError:
            pass                                     # gone meanwhile: nothing to free
        except OSError as e:
            errors.append(f"cannot delete {path}: {os.strerror(e.errno) if e.errno else e}")
    for item, tmp in renamed:
        try:
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        except OSError as e:
            errors.append(f"cannot delete {tmp} (was {item.path}): {os.strerror(e.errno) if e.errno else e}")
    return errors


def format_plan(plan: Plan, dry_run: bool) -> str:
    verb = "would delete" if dry_run else "deleting"
    lines = [f"{verb} {human_size(i.size):>9}  {i.path}  ({i.kind}, {i.files} file{'s' * (i.files != 1)})"
             for i in plan.delete]
    lines += [f"kept: {b['path']}  ({b['reason']})" for b in plan.busy]
    lines.append(f"kept: {plan.kept_files} cache files ({human_size(plan.kept_size)}) used by "
                 f"{len(plan.kept_runs)} run(s)")
    lines.append(f"{'would free' if dry_run else 'freeing'} {human_size(plan.size)} in "
                 f"{sum(i.files for i in plan.delete)} files")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command
def add_parser(sub) -> None:
    p = sub.add_parser("gc", help="delete caches that no kept run uses (runs only when asked)",
                       description="Delete the Lab/label shards, manifests, GMMs, mean lightness and "
                                   "priors that no kept run uses (README 'Runs and caches').  Kept runs: "
                                   "all, or those --run/--config/--dataset select, plus every unfinished "
                                   "or running run.  Run folders are deleted only with --delete-runs.",
                       epilog="exit status: 0 done (or listed with --dry-run), 1 some item could not be "
                              "deleted, 2 bad arguments, no such work dir or run, or a selection "
                              "matching no run (nothing deleted)")
    p.add_argument("--work-dir", default=None, help="default: luigi.cfg [colorize] work_dir")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.add_argument("--run", nargs="+", default=[], metavar="NAME", help="keep the caches of these run folders")
    p.add_argument("--config", nargs="+", type=int, default=[], metavar="N",
                   help="keep the caches of the runs of these config numbers")
    p.add_argument("--dataset", default=None, help="keep only runs on this dataset root")
    p.add_argument("--keep", nargs="+", default=[], metavar="PATH", help="also keep these files or folders")
    p.add_argument("--delete-runs", action="store_true",
                   help="also delete the run folders that are not kept (needs a selection)")
    p.add_argument("--checkpoints", action="store_true",
                   help="also delete the resume checkpoints (checkpoint.pt, checkpoint.prev.pt) of finished "
                        "runs; best.pt stays, so they still colorize and evaluate.  Never of a run in use")
    p.add_argument("--min-age", type=_minutes, default=60.0, metavar="MINUTES",
                   help="folders with a file younger than this are kept as recent (default 60)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_gc)


def _minutes(text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 minutes, got {text}")
    return value


def cmd_gc(args) -> int:
    work = Path(args.work_dir or default_work_dir())
    try:
        plan = plan_gc(work, args.run, args.config, args.dataset, args.keep, args.delete_runs,
                       min_age_s=args.min_age * 60, checkpoints=args.checkpoints)
    except GCError as e:
        sys.stderr.write(f"colorize-fcn: error: {e}\n")
        return 2
    for w in plan.warnings:
        sys.stderr.write(f"colorize-fcn: warning: {w}\n")
    if args.json:
        print(json.dumps({**asdict(plan), "size": plan.size, "dry_run": args.dry_run}, indent=1))
    else:
        print(format_plan(plan, args.dry_run), flush=True)
    if args.dry_run:
        return 0
    errors = execute(plan)
    for e in errors:
        sys.stderr.write(f"colorize-fcn: error: {e}\n")
    return 1 if errors else 0
