"""Preprocessing at scale: Lab + GMM + label shards through Luigi vs image count and workers,
shard storage per image, and a plan for ImageNet (docs/scaling.md).

Each measurement runs `PrepareRun` (Lab shards -> FitGMM -> label shards, train and val
splits) of config 14 (K=16, low-pass 8, shard_size 256; val_split = val) in a fresh
process and a fresh work dir, on generated ImageNet-like JPEGs (~500x375,
pipeline.synthetic.generate_imagenet_like), with `--workers W` and one BLAS/OpenMP thread
per process.  Per-task processing times come from Luigi's PROCESSING_TIME event, so the
per-worker rate of each stage is known as well as the wall time.

Default (what `make bench` runs, ~1-2 min): N=512 images at the real size 256 with one
worker: images/s per worker (the value), bytes per image of Lab and label shards.

    .venv/bin/python bench/scale.py [--n 512]
    .venv/bin/python bench/scale.py --sweep 2500 5000 10000 20000 --sweep-workers 1 2 \
        --sweep-size 64 --data-dir data/generated/scale-20000    # the README's figures

The last line printed is a JSON object {"bench": "scale", "value": images/s per worker at
256 (Lab + label stages, GMM fit excluded), ...}.
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
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN = 1_281_167
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- child: one build
def _child(spec):
    """Run PrepareRun in this process (Luigi forks W worker processes); append
    'family<TAB>seconds' per finished task to spec['times']."""
    sys.path.insert(0, str(REPO))
    import luigi
    import tasks

    @luigi.Task.event_handler(luigi.Event.PROCESSING_TIME)
    def _record(task, seconds):
        with open(spec["times"], "a") as f:
            f.write(f"{task.task_family}\t{seconds}\n")

    cfg = luigi.configuration.get_config()
    cfg.set("colorize", "work_dir", spec["work"])
    ok = luigi.build([tasks.PrepareRun(config=14, overrides={"val_split": "val", "im_size": spec["im_size"]},
                                      dataset=spec["root"])],
                     workers=spec["workers"], local_scheduler=True, log_level="WARNING")
    sys.exit(0 if ok else 1)


def run_pipeline(root, n, workers, im_size, scratch):
    """Build PrepareRun on `root` in a fresh process + work dir; return timings and sizes."""
    work = Path(tempfile.mkdtemp(prefix="work-", dir=scratch))
    times = work.with_suffix(".times")
    spec = {"root": str(root), "workers": workers, "im_size": im_size, "work": str(work), "times": str(times)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], cwd=REPO, env=ENV,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"PrepareRun failed on {root}:\n{proc.stderr[-3000:]}")
    stage = defaultdict(float)
    for line in times.read_text().splitlines():
        family, seconds = line.split("\t")
        stage[family] += float(seconds)
    lab = [p for p in (work / "lab").rglob("*.h5")]
    labels = [p for p in (work / "labels").rglob("*.h5")]
    out = {"n": n, "workers": workers, "im_size": im_size, "wall_s": round(wall, 2),
           "images_per_s": round(n / wall, 1),
           "lab_worker_s": round(stage["LabShard"], 2), "gmm_s": round(stage["FitGMM"], 2),
           "label_worker_s": round(stage["LabelShard"], 2),
           "lab_images_per_worker_s": round(n / stage["LabShard"], 1),
           "label_images_per_worker_s": round(n / stage["LabelShard"], 1),
           "shards": len(lab), "lab_bytes": sum(p.stat().st_size for p in lab),
           "label_bytes": sum(p.stat().st_size for p in labels)}
    shutil.rmtree(work, ignore_errors=True)
    times.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- datasets
def dataset(path, n):
    from pipeline.synthetic import generate_imagenet_like
    t0 = time.perf_counter()
    info = generate_imagenet_like(path, n, seed=0)
    return info, time.perf_counter() - t0


def subset(full, n, dest):
    """A dataset root holding the first 90% / 10% of full's train / val lists (symlinked)."""
    from pipeline.splits import list_split
    dest.mkdir(parents=True, exist_ok=True)
    train, val = list_split(full, "train"), list_split(full, "val")
    n_val = max(1, round(n * len(val) / (len(train) + len(val))))
    for split, files, k in (("train", train, n - n_val), ("val", val, n_val)):
        if not (dest / split).exists():
            (dest / split).symlink_to(Path(full).resolve() / split, target_is_directory=True)
        (dest / f"files_{split}.txt").write_text("\n".join(files[:k]) + "\n")
    return dest


def linear_fit(points):
    """Least squares t = a + b n over [(n, t)]; returns a, b and the largest relative residual."""
    ns, ts = [p[0] for p in points], [p[1] for p in points]
    mn, mt = statistics.fmean(ns), statistics.fmean(ts)
    b = sum((n - mn) * (t - mt) for n, t in points) / sum((n - mn) ** 2 for n in ns)
    a = mt - b * mn
    return a, b, max(abs(t - (a + b * n)) / t for n, t in points)


# ----------------------------------------------------------------------------- main
def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--_child":
        return _child(json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="images for the 256 px measurement (default 512)")
    ap.add_argument("--sweep", type=int, nargs="*", default=[], help="image counts for the scaling sweep")
    ap.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sweep-size", type=int, default=64, help="im_size of the sweep (default 64)")
    ap.add_argument("--data-dir", default="", help="generated dataset (kept and reused); default: a temp dir")
    ap.add_argument("--workers-plan", type=int, nargs="+", default=[16, 64], help="worker counts for the plan")
    args = ap.parse_args()

    n_total = max([args.n] + args.sweep)
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    data = Path(args.data_dir) if args.data_dir else scratch / "data"
    result = {"bench": "scale", "value": None, "unit": "images/s", "goal": None}
    try:
        info, gen_s = dataset(data, n_total)
        result["generate"] = {"n": n_total, "seconds": round(gen_s, 1), "created": info["created"]}
        print(f"dataset {data}: {n_total} images ({'generated in %.0f s' % gen_s if info['created'] else 'reused'})",
              file=sys.stderr)

        # -- the real size: per-worker rate and storage per image
        r = run_pipeline(subset(data, args.n, scratch / f"sub-{args.n}"), args.n, 1, 256, scratch)
        print(f"256 px, {args.n} images, 1 worker: {r}", file=sys.stderr)
        per_worker = args.n / (r["lab_worker_s"] + r["label_worker_s"])
        result.update(value=round(per_worker, 2), at_256=r,
                      lab_bytes_per_image=round(r["lab_bytes"] / args.n),
                      label_bytes_per_image=round(r["label_bytes"] / args.n))

        # -- the sweep
        sweep = []
        for n in args.sweep:
            root = subset(data, n, scratch / f"sub-{n}")
            for w in args.sweep_workers:
                s = run_pipeline(root, n, w, args.sweep_size, scratch)
                print(f"{args.sweep_size} px, {n} images, {w} worker(s): {s}", file=sys.stderr)
                sweep.append(s)
        if sweep:
            result["sweep"] = sweep
            result["linear_fit"] = {}
            for w in args.sweep_workers:
                pts = [(s["n"], s["wall_s"]) for s in sweep if s["workers"] == w]
                if len(pts) >= 2:
                    a, b, dev = linear_fit(pts)
                    result["linear_fit"][str(w)] = {"fixed_s": round(a, 1), "ms_per_image": round(1000 * b, 3),
                                                    "max_rel_residual": round(dev, 3)}

        # -- ImageNet plan from the 256 px figures
        n_img = IMAGENET_TRAIN
        from pipeline.plan import group_files    # the real grouping on ImageNet-like names
        names = [f"train/n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(1000) for i in range(n_img // 1000 + 1)]
        groups = [len(g) for g in group_files(names[:n_img], 256)]
        plan = {"images": n_img, "shard_size": 256, "shards": len(groups),
                "images_per_shard": {"mean": round(statistics.fmean(groups), 1), "max": max(groups)},
                "lab_GB": round(n_img * result["lab_bytes_per_image"] / 1e9, 1),
                "label_GB": round(n_img * result["label_bytes_per_image"] / 1e9, 1),
                "lab_MB_per_shard": round(256 * result["lab_bytes_per_image"] / 1e6, 1),
                "label_MB_per_shard": round(256 * result["label_bytes_per_image"] / 1e6, 2),
                "hours": {str(w): round(n_img / (per_worker * w) / 3600, 2) for w in [1] + args.workers_plan}}
        result["imagenet_plan"] = plan
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["note"] = "shared 2-core machine: rates are lower bounds"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
