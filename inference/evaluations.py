"""`colorize-fcn evaluate --model RUN [SPLIT|DIR]`: score a run folder through the Luigi graph's own
Evaluate task (what `luigi --module tasks Evaluate ... [--split S | --images DIR]` runs), and find
a run's evaluations on a given split or folder.  Parsing imports no torch.

A run folder names its experiment in inputs.json (arch, the resolved config with its number,
the dataset); the overrides are the keys that differ from the numbered config today
(runs.overrides_of).  Evaluate is told which run folder it must score (expect_run): if the
config changed since the run trained, its signature names another run, and the command stops
with one line instead of training that one.
"""
import json
import sys
from pathlib import Path

from models.registry import DEFAULT_TEMPERATURE

from .evaluated import as_target, describe_evaluation
from .runs import overrides_of

PROG = "colorize-fcn"
# luigi run status -> the exit codes of README "Set-up, logs and exit codes" (luigi.cfg [retcode])
EXIT_CODES = {"SUCCESS": 0, "SUCCESS_WITH_RETRY": 0, "MISSING_EXT": 20, "NOT_RUN": 25, "FAILED": 30,
              "FAILED_AND_SCHEDULING_FAILED": 30, "SCHEDULING_FAILED": 35}


class RunFolderError(ValueError):
    """Not a finished run folder; the message is one line."""


def run_identity(run_dir) -> dict:
    """{arch, config, overrides, dataset, work_dir, cfg} of a finished run folder <work>/runs/<run>."""
    run_dir = Path(run_dir).resolve()
    try:
        inputs = json.loads((run_dir / "inputs.json").read_text())
        cfg, arch = inputs["cfg"], inputs["arch"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"{run_dir} is not a prepared run folder (no readable inputs.json: "
                             f"{' '.join(str(e).split())})") from None
    if not ((run_dir / "done.json").is_file() and (run_dir / "best.pt").is_file()):
        raise RunFolderError(f"{run_dir.name} has not finished training (no done.json + best.pt): "
                             f"finish it with luigi first")
    if run_dir.parent.name != "runs":
        raise RunFolderError(f"{run_dir} is not in a work dir's runs/ folder")
    overrides = overrides_of(cfg)
    if overrides is None:
        raise RunFolderError(f"{run_dir.name} was trained with config {cfg.get('config')}, which is no longer defined")
    return {"arch": arch, "config": cfg["config"], "overrides": overrides, "dataset": inputs.get("dataset", ""),
            "work_dir": str(run_dir.parent.parent), "cfg": cfg, "run_dir": str(run_dir)}


def task_args(ident: dict) -> list:
    """The --config/--arch/--overrides/--dataset arguments of the run's Luigi tasks."""
    args = ["--config", str(ident["config"]), "--arch", ident["arch"]]
    if ident["overrides"]:
        args += ["--overrides", json.dumps(ident["overrides"], separators=(",", ":"))]
    return args + (["--dataset", ident["dataset"]] if ident["dataset"] else [])


def target_args(on) -> list:
    """--images DIR for a folder (as_target), --split NAME for a split name, nothing for None."""
    if on is None:
        return []
    return ["--images", str(on)] if isinstance(on, Path) else ["--split", str(on)]


def evaluate_command(run_dir, on=None) -> str:
    """The `luigi` command line that makes this evaluation (what `compare` tells the user)."""
    import shlex
    ident = run_identity(run_dir)
    args = task_args(ident) + target_args(on) + ["--colorize-work-dir", ident["work_dir"]]
    return " ".join(["luigi --module tasks Evaluate", *map(shlex.quote, args)])


def luigi_argv(runs_and_targets, temperature=DEFAULT_TEMPERATURE, gallery=4, device=None, workers=1) -> list:
    """The in-process `luigi` arguments that evaluate each (run folder, on) pair (one work dir)."""
    idents = [run_identity(run) for run, _ in runs_and_targets]
    work = {i["work_dir"] for i in idents}
    if len(work) > 1:
        raise RunFolderError(f"the runs are in different work dirs ({', '.join(sorted(work))})")
    argv = ["--module", "tasks", "--local-scheduler", "--no-lock", "--workers", str(workers),
            "--colorize-work-dir", work.pop()]
    if device:
        argv += ["--colorize-device", device]
    tasks = []
    for ident, (_, on) in zip(idents, runs_and_targets):
        tasks.append(["Evaluate", *task_args(ident), *target_args(on), "--temperature", str(temperature),
                      "--gallery", str(gallery), "--expect-run", ident["run_dir"]])
    return argv, tasks


def run_luigi(argv, task) -> int:
    """Run one task's Luigi command in this process; the README exit code."""
    import luigi.configuration
    import luigi.interface
    import luigi.task_register
    quiet = [] if luigi.configuration.get_config().has_option("core", "logging_conf_file") else \
        ["--log-level", "WARNING"]                      # no project luigi.cfg here: Luigi would log DEBUG
    # task instances are cached per process with their [colorize] settings read once: one made
    # by an earlier build in this process (another work dir) must not stand for this command's
    luigi.task_register.Register.clear_instance_cache()
    result = luigi.interface.run(argv[:2] + task[:1] + argv[2:] + quiet + task[1:], detailed_summary=True)
    return EXIT_CODES.get(result.status.name, 30)


def evaluate_runs(runs_and_targets, **options) -> int:
    """Evaluate each (run folder, on) through Luigi's Evaluate; 0 or the first failure's exit code."""
    argv, tasks = luigi_argv(runs_and_targets, **options)
    for task in tasks:
        code = run_luigi(argv, task)
        if code:
            return code
    return 0


# ----------------------------------------------------------------------------- finding evaluations
def matches(rec: dict, ident: dict, on) -> bool:
    """Whether an evaluation record scored `on` (a folder, a split name, None = the run's val split)
    of this run (the split of the run's own dataset)."""
    if not rec:
        return False
    if isinstance(on, Path):
        return "folder" in rec and Path(rec["folder"]) == on
    split = ident["cfg"].get("val_split") if on is None else on
    return "split" in rec and rec["split"] == split and \
        Path(rec.get("dataset", "")).resolve() == Path(ident["dataset"]).resolve()


def find_evaluation(run_dir, on=None, temperature=DEFAULT_TEMPERATURE):
    """The newest <run>/eval-*/ folder that scored `on` at this temperature, or None."""
    ident = run_identity(run_dir)
    found = []
    for path in Path(run_dir).glob("eval-*/metrics.json"):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if matches(m.get("evaluated_on"), ident, on) and m.get("temperature") == temperature:
            found.append((path.stat().st_mtime, path.parent))
    return max(found)[1] if found else None


# ----------------------------------------------------------------------------- the command
def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run on a split of its dataset or on a folder of images",
                       description="Score a finished run on ON: a folder (every image below it) or a split "
                                   "name of the run's dataset (default: the run's validation split), with the "
                                   "run's own GMM and label settings, through the Luigi graph's Evaluate task "
                                   "(the folder's Lab and label shards are cached in the run's work dir like "
                                   "any split's). Prints the metrics and the report's path.",
                       epilog="exit status: 0 evaluated, 2 bad arguments or not a finished run folder, "
                              "30 the evaluation failed, 35 bad split or an empty folder")
    p.add_argument("on", nargs="?", default=None, metavar="DIR_OR_SPLIT",
                   help="a folder of images or a split name (default: the run's val split)")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a finished run folder <work>/runs/<run>")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"annealed-mean temperature (default {DEFAULT_TEMPERATURE})")
    p.add_argument("--gallery", type=int, default=4, help="best and worst images in the report (default 4)")
    p.add_argument("--device", default=None, help="default: luigi.cfg [colorize] device")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    try:
        run_identity(args.model)
        if args.on is not None and not Path(args.on).is_dir() and ("/" in args.on or Path(args.on).exists()):
            raise RunFolderError(f"{args.on} is not a folder (nor a split name)")
    except RunFolderError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 2
    on = as_target(args.on)
    options = dict(temperature=args.temperature, gallery=args.gallery)
    code = evaluate_runs([(args.model, on)], device=args.device, **options)
    if code:
        sys.stderr.write(f"{PROG}: error: the evaluation did not finish (exit {code}); the lines above say why\n")
        return code
    found = find_evaluation(args.model, on, args.temperature)
    if found is None:               # the task succeeded, so its output exists: a bug if this is reached
        sys.stderr.write(f"{PROG}: error: no evaluation of {args.model} on {args.on or 'its val split'} found\n")
        return 30
    from .report import metrics_table
    metrics = json.loads((found / "metrics.json").read_text())
    print(f"{Path(args.model).name} on {describe_evaluation(metrics.get('evaluated_on'))}:")
    print(metrics_table(metrics))
    print(f"Report: {found / 'report.html'}")
    return 0
