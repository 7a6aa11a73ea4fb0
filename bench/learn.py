"""Does the method learn?  FCN-32s then FCN-16s on generated textures, scored on held-out layouts.

The data (pipeline/textures.py): images of a few textured regions drawn in lightness (fine
stripes, coarse diagonal stripes, dots, noise grain, smooth ramps), each texture with its own
hue and chroma, each region's brightness and contrast random; the held-out 'val' split has new
layouts.  Colour follows from what the lightness shows, so a model that learns must beat the
gray baseline on images it never saw.

It runs through the real pipeline, in this process, with the local scheduler: Lab and label
shards, GMM, mean lightness, FCN-32s, FCN-16s started from it, and Evaluate of both on 'val'.
It prints, for each, the model (annealed mean), gray and oracle (the targets decoded the same
way: the ceiling K and the low-pass allow) AuC and PSNR on the held-out split, and the fraction
of the gray-to-oracle AuC gap the model closes.  value = that fraction for FCN-16s; goal >= 0.5.
The wall time and this process's CPU time (training, preprocessing and evaluation all run in
it) are reported, so a run on a machine busy with other jobs can be judged.

    .venv/bin/python bench/learn.py [--smoke] [--keep DIR] [--iterations N] [--train N]

--smoke: a few images and steps (seconds; tests/test_bench_smoke.py), not a measurement.
"""
import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.chdir(REPO)                      # luigi.cfg and its logging set-up are read from the repository

import luigi  # noqa: E402

import tasks  # noqa: E402
from pipeline.textures import generate_textures  # noqa: E402

BASE_CONFIG = 101                   # the CPU demo config; the sizes below are overrides of it
MODEL, GRAY, ORACLE = "model/annealed", "gray", "oracle/annealed"
# (images per split, side in px, training overrides); the full size trains in <= 15 min on 2 cores
SIZES = {
    "full": dict(train=400, val=100, size=64, overrides=dict(
        im_size=64, shard_size=64, n_clusters=8, img_lowpass=4, width=1 / 16, lr=1e-3, batch_size=8,
        max_iteration=350, interval_validate=175, train_split="train", val_split="val", flip=True,
        gmm_pixels_few=200, mean_pixels=50_000)),
    "smoke": dict(train=12, val=4, size=32, overrides=dict(
        im_size=32, shard_size=8, n_clusters=8, img_lowpass=4, width=1 / 16, lr=1e-3, batch_size=4,
        max_iteration=4, interval_validate=2, train_split="train", val_split="val", flip=True,
        gmm_pixels_few=100, mean_pixels=5_000)),
}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def gap_closed(methods: dict, metric: str = "auc") -> float:
    """(model - gray) / (oracle - gray): 0 is the gray baseline, 1 the oracle."""
    gray = methods[GRAY][metric]
    return (methods[MODEL][metric] - gray) / (methods[ORACLE][metric] - gray)


def run(size: dict, data: Path, work: Path) -> dict:
    generate_textures(data, size["train"], size["val"], size["size"])
    cfg = luigi.configuration.get_config()
    for key, value in {"work_dir": str(work), "loader_workers": "0", "device": "cpu"}.items():
        cfg.set("colorize", key, value)
    common = dict(config=BASE_CONFIG, overrides=size["overrides"], dataset=str(data), split="val", gallery=2)
    evals = {arch: tasks.Evaluate(arch=arch, **common) for arch in ("fcn32s", "fcn16s")}
    result = luigi.build(list(evals.values()), local_scheduler=True, workers=1, detailed_summary=True,
                         log_level="WARNING")
    if not all(e.complete() for e in evals.values()):
        raise SystemExit(f"learn: the pipeline failed:\n{result.summary_text}")
    out = {}
    for arch, ev in evals.items():
        m = json.loads(Path(ev.output().path).read_text())
        methods = m["methods"]
        out[arch] = {"n_images": m["n_images"], "report": str(ev.out_dir() / "report.html"),
                     **{f"{name}_{k}": round(methods[key][k], 3) for name, key in
                        (("model", MODEL), ("gray", GRAY), ("oracle", ORACLE)) for k in ("auc", "psnr")},
                     "gap_closed_auc": round(gap_closed(methods), 4),
                     "gap_closed_psnr": round(gap_closed(methods, "psnr"), 4)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few images and steps (seconds): checks, not a measurement")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep the data and work dir here (default: a "
                                                                "temporary folder, deleted)")
    p.add_argument("--iterations", type=int, default=None, help="training steps per architecture")
    p.add_argument("--train", type=int, default=None, help="training images")
    args = p.parse_args(argv)
    size = json.loads(json.dumps(SIZES["smoke" if args.smoke else "full"]))
    if args.iterations:
        size["overrides"].update(max_iteration=args.iterations,
                                 interval_validate=max(1, args.iterations // 6))
    if args.train:
        size["train"] = args.train
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="colorize-learn-"))
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        rows = run(size, root / "textures", root / "work")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    print(f"{'':8} {'model AuC':>10} {'gray AuC':>9} {'oracle AuC':>11} {'model PSNR':>11} {'gray PSNR':>10} "
          f"{'oracle PSNR':>12} {'gap closed':>11}")
    for arch, r in rows.items():
        print(f"{arch:8} {r['model_auc']:>10.2f} {r['gray_auc']:>9.2f} {r['oracle_auc']:>11.2f} "
              f"{r['model_psnr']:>11.2f} {r['gray_psnr']:>10.2f} {r['oracle_psnr']:>12.2f} {r['gap_closed_auc']:>11.3f}")
    print(f"held-out split: {rows['fcn16s']['n_images']} images of new layouts; {wall:.0f} s wall, "
          f"{cpu:.0f} s CPU (this process)")
    print(json.dumps({"bench": "learn", "value": rows["fcn16s"]["gap_closed_auc"], "unit": "fraction of the "
                      "gray-to-oracle AuC gap closed by FCN-16s on held-out images", "goal": 0.5, "goal_op": ">=",
                      "smoke": args.smoke, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "model": MODEL, "rows": rows, "config": BASE_CONFIG, "overrides": size["overrides"],
                      "images": {"train": size["train"], "val": size["val"], "size": size["size"]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
