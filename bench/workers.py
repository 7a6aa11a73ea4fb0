"""Parallel preprocessing: `luigi --workers 2` vs `--workers 1` building Lab + label shards.

Generates 2,000 ImageNet-like JPEGs once, then builds `PrepareRun --config 14` (im_size 256,
K=16, low-pass 8; overrides: val_split=val and shard_size=128 so the images make ~16
shards that two workers can share; at 300 images the fixed costs -- start-up, the
sklearn import and GMM fit -- are most of the run) from scratch in fresh subprocesses, each into its own
empty work dir, alternating the order (1, 2, 2, 1, ...).  The report also gives per family
the sum of task wall times and their CPU/wall (task CPU = process CPU time of the process
running it, all threads: > 1 means the task itself is multi-threaded, < 1 that it waits
for a CPU), the thread pools seen in the task processes (threadpoolctl) and the share
of the 1-worker run that cannot run in parallel (FitGMM, startup, scheduling).  Control:
after every build, the same pure-Python CPU-bound work is timed serially and as two
processes (machine_2proc_speedup: what two processes can gain on this machine right now).  value = median wall time with 1
worker / median wall time with 2; goal >= 1.7.

Each run is `python bench/workers.py --child LOG -- <luigi args>`: luigi's own command
line (luigi.cmdline.luigi_run) plus START/SUCCESS event handlers that append task
timings to LOG, so the report splits every run into startup (process start, imports,
scheduling up to the first task), the Lab phase, FitGMM and the label phase.

--env-threads-1 sets OMP/OPENBLAS/MKL_NUM_THREADS=1 in the children's environment (a
what-if for the thread-oversubscription question; the default run leaves the environment
as it is).

    .venv/bin/python bench/workers.py [--n 2000] [--reps 2] [--shard-size 128] [--env-threads-1]
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

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def child(log, luigi_args):
    """Run luigi's command line with task timing handlers (in this fresh process)."""
    t_main = time.time()
    import luigi
    from luigi.cmdline import luigi_run
    seen_pids = set()

    def write(event, task):
        rec = {"event": event, "family": task.task_family, "t": time.time(), "cpu": time.process_time(),
               "pid": os.getpid()}
        if event == "start" and os.getpid() not in seen_pids:
            seen_pids.add(os.getpid())
            try:
                from threadpoolctl import threadpool_info
                rec["pools"] = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
            except Exception:
                pass
        with open(log, "a") as f:                   # one short O_APPEND write per event
            f.write(json.dumps(rec) + "\n")

    luigi.Task.event_handler(luigi.Event.START)(lambda task: write("start", task))
    luigi.Task.event_handler(luigi.Event.SUCCESS)(lambda task: write("success", task))
    with open(log, "a") as f:
        f.write(json.dumps({"event": "main", "t": t_main, "pid": os.getpid()}) + "\n")
    luigi_run(luigi_args)


def summarise(log, t_launch, t_end):
    events = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    main = next(e["t"] for e in events if e["event"] == "main")
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "success"]
    open_ = {}
    busy = {f: {"wall": 0.0, "cpu": 0.0, "n": 0} for f in ("LabShard", "FitGMM", "LabelShard")}
    for e in sorted(starts + ends, key=lambda e: e["t"]):
        key = (e["pid"], e["family"])
        if e["event"] == "start":
            open_[key] = e
        elif key in open_ and e["family"] in busy:
            s = open_.pop(key)
            b = busy[e["family"]]
            b["wall"] += e["t"] - s["t"]
            b["cpu"] += e["cpu"] - s["cpu"]
            b["n"] += 1
    pools = sorted({tuple(map(tuple, e["pools"])) for e in starts if "pools" in e})
    out = {"wall_s": round(t_end - t_launch, 2),
           "imports_s": round(main - t_launch, 2),                  # interpreter start up to our main
           "to_first_task_s": round(min(e["t"] for e in starts) - main, 2),   # luigi, tasks, scheduling
           "after_last_task_s": round(t_end - max(e["t"] for e in ends), 2)}
    for fam, b in busy.items():
        out[f"{fam}_n"] = b["n"]
        out[f"{fam}_wall_sum_s"] = round(b["wall"], 2)               # sum of task START->SUCCESS
        out[f"{fam}_cpu_per_wall"] = round(b["cpu"] / b["wall"], 2) if b["wall"] else None
    out["thread_pools_in_task_processes"] = [list(map(list, p)) for p in pools][:2]
    return out


def _burn(n):
    """Fixed CPU-bound work (numpy-free) for the machine-ceiling control."""
    x = 0
    for i in range(n):
        x = (x * 1103515245 + i) % 2147483647
    return x


def machine_ceiling(n=3_000_000):
    """Wall of two units of _burn in one process vs in two processes at once: the speedup
    this machine gives two processes right now (1.0-2.0), measured between the builds."""
    import multiprocessing as mp
    t0 = time.perf_counter()
    _burn(n)
    _burn(n)
    serial = time.perf_counter() - t0
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_burn, args=(n,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    parallel = time.perf_counter() - t0
    return serial / parallel


def run_build(data, work, workers, overrides, log, env):
    args = ["--module", "tasks", "PrepareRun", "--config", "14", "--overrides", json.dumps(overrides),
            "--dataset", str(data), "--workers", str(workers), "--colorize-work-dir", str(work),
            "--log-level", "WARNING"]
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(log), "--", *args],
                          cwd=REPO, env=env, capture_output=True, text=True)
    t1 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"luigi run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return summarise(log, t0, t1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=2, help="runs per worker count")
    ap.add_argument("--shard-size", type=int, default=128)
    ap.add_argument("--env-threads-1", action="store_true", help="OMP/OPENBLAS/MKL_NUM_THREADS=1 in children")
    args = ap.parse_args()
    t_start = time.perf_counter()
    from pipeline.synthetic import generate_imagenet_like

    env = dict(os.environ)
    if args.env_threads_1:
        env.update({k: "1" for k in THREAD_VARS})
    overrides = {"val_split": "val", "shard_size": args.shard_size}
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    try:
        data = tmp / "data"
        generate_imagenet_like(data, args.n, seed=4)
        for p in data.rglob("*.jpg"):                  # warm the page cache for every run
            p.read_bytes()
        runs = {1: [], 2: []}
        ceilings = []
        order = []
        for r in range(args.reps):
            order += [1, 2] if r % 2 == 0 else [2, 1]
        for i, w in enumerate(order):
            work = tmp / f"work-{i}-w{w}"
            res = run_build(data, work, w, overrides, tmp / f"log-{i}.jsonl", env)
            runs[w].append(res)
            ceilings.append(machine_ceiling())
            print(f"workers={w}: {json.dumps(res)}", file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)
        med = {w: {k: (statistics.median(r[k] for r in runs[w]) if isinstance(v, (int, float)) else v)
                   for k, v in runs[w][0].items() if v is not None} for w in runs}
        result = {"bench": "workers", "value": round(med[1]["wall_s"] / med[2]["wall_s"], 3),
                  "unit": "speedup wall(1 worker)/wall(2 workers)", "goal": 1.7, "goal_op": ">=",
                  "wall_s_1": med[1]["wall_s"], "wall_s_2": med[2]["wall_s"],
                  "split_1": med[1], "split_2": med[2],
                  # per-task slowdown when two run at once (1.0 = perfect scaling of the parallel part)
                  "lab_task_slowdown_2v1": round(med[2]["LabShard_wall_sum_s"] / med[1]["LabShard_wall_sum_s"], 2),
                  "label_task_slowdown_2v1": round(med[2]["LabelShard_wall_sum_s"] / med[1]["LabelShard_wall_sum_s"], 2),
                  # FitGMM runs alone: Amdahl bound on the speedup with 2 workers
                  "serial_fraction_1": round((med[1]["FitGMM_wall_sum_s"] + med[1]["to_first_task_s"]
                                              + med[1]["imports_s"]) / med[1]["wall_s"], 3),
                  "load_avg_1min": round(os.getloadavg()[0], 2),
                  # control: CPU-bound pure-Python work, 1 vs 2 processes, between the builds
                  "machine_2proc_speedup": round(statistics.median(ceilings), 3),
                  "machine_2proc_speedups": [round(c, 2) for c in ceilings],
                  "walls_1": [r["wall_s"] for r in runs[1]], "walls_2": [r["wall_s"] for r in runs[2]],
                  "n_images": args.n, "shard_size": args.shard_size, "reps": args.reps,
                  "env_threads_1": args.env_threads_1, "cpus": os.cpu_count(),
                  "seconds": round(time.perf_counter() - t_start, 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sep = sys.argv.index("--")
        child(sys.argv[2], sys.argv[sep + 1:])
    else:
        main()
