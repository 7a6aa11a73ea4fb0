"""No-op rerun: how long Luigi takes to find that a built dataset's labels are complete.

Generates --n ImageNet-like JPEGs (default 10,000; 10 % val), builds `PrepareRun --config 14`
with small settings so the build is quick (overrides: im_size 32, img_lowpass 4,
shard_size 256, n_clusters 16, val_split val) once with `--workers 2`, then times, in
fresh processes, interleaved (--reps rounds):

  noop      python -m luigi --module tasks PrepareRun ... --colorize-work-dir DIR  (the value)
  imports   python -c "import luigi.cmdline, tasks"        (process start + imports)
  bare      python -c "pass"                                (interpreter start alone)

and in this process luigi.build([PrepareRun(...)], local_scheduler=True) with the task
instance cache cleared each time (in_process_s).  value = median noop seconds; goal <= 5.
scheduling_s = noop - imports: the completeness checks (split lists, stat of every
source file, signatures, one exists() per shard output) plus Luigi's scheduling.

Every no-op run is checked to have run nothing (Luigi's summary; exit code 0).

    .venv/bin/python bench/noop_rerun.py [--n 10000] [--reps 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OVERRIDES = {"im_size": 32, "img_lowpass": 4, "shard_size": 256, "n_clusters": 16, "val_split": "val"}


def luigi_args(data, work, workers):
    return ["-m", "luigi", "--module", "tasks", "PrepareRun", "--config", "14",
            "--overrides", json.dumps(OVERRIDES), "--dataset", str(data), "--workers", str(workers),
            "--colorize-work-dir", str(work)]


def timed(cmd, check_noop=False):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} failed ({proc.returncode}):\n{out[-3000:]}")
    if check_noop and ("Did not run any tasks" not in out or " ran successfully" in out):
        raise RuntimeError(f"the rerun was not a no-op:\n{out[-3000:]}")
    return dt, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    t_start = time.perf_counter()
    from pipeline.synthetic import generate_imagenet_like

    tmp = Path(tempfile.mkdtemp(prefix="bench-noop-"))
    try:
        data, work = tmp / "data", tmp / "work"
        t0 = time.perf_counter()
        generate_imagenet_like(data, args.n, seed=5)
        gen_s = time.perf_counter() - t0
        build_s, build_out = timed(luigi_args(data, work, 2))
        if os.environ.get("BENCH_SHOW_NOOP"):
            print(timed(luigi_args(data, work, 1), check_noop=True)[1], file=sys.stderr)
        n_shards = sum(1 for _ in work.rglob("*.h5"))

        import luigi
        from luigi.task_register import Register
        import tasks
        cfg = luigi.configuration.get_config()
        if not cfg.has_section("colorize"):
            cfg.add_section("colorize")
        cfg.set("colorize", "work_dir", str(work))

        def in_process():
            Register.clear_instance_cache()
            t = tasks.PrepareRun(config=14, overrides=OVERRIDES, dataset=str(data))
            t0 = time.perf_counter()
            res = luigi.build([t], local_scheduler=True, workers=1, log_level="WARNING",
                              detailed_summary=True)
            dt = time.perf_counter() - t0
            if res.status.name not in ("SUCCESS", "SUCCESS_WITH_RETRY") or "ran successfully" in res.summary_text:
                raise RuntimeError(f"in-process rerun was not a no-op: {res.status} {res.summary_text}")
            return dt

        times = {"noop": [], "imports": [], "bare": [], "in_process": []}
        sides = {"noop": lambda: timed(luigi_args(data, work, 1), check_noop=True)[0],
                 "imports": lambda: timed(["-c", "import luigi.cmdline, tasks"])[0],
                 "bare": lambda: timed(["-c", "pass"])[0],
                 "in_process": in_process}
        order = list(sides)
        for r in range(args.reps):
            for name in (order if r % 2 == 0 else order[::-1]):
                times[name].append(sides[name]())
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {"bench": "noop_rerun", "value": round(med["noop"], 3), "unit": "s (fresh-process no-op luigi run)",
                  "goal": 5, "goal_op": "<=",
                  "process_start_and_imports_s": round(med["imports"], 3),
                  "interpreter_start_s": round(med["bare"], 3),
                  "scheduling_s": round(med["noop"] - med["imports"], 3),
                  "in_process_s": round(med["in_process"], 3),
                  "noop_runs_s": [round(x, 3) for x in times["noop"]],
                  "in_process_runs_s": [round(x, 3) for x in times["in_process"]],
                  "n_images": args.n, "n_shard_files": n_shards, "overrides": OVERRIDES,
                  "generate_s": round(gen_s, 1), "build_s": round(build_s, 1),
                  "seconds": round(time.perf_counter() - t_start, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
