"""`colorize-fcn compare RUN [RUN ...] [--on SPLIT|DIR] [--out compare.html]`: which experiment won.

One self-contained HTML page (figures and photos inline) with, for the runs:
  - the settings that differ between them (architecture, dataset, config keys);
  - a metrics table (every model decoder, gray, oracle) on ONE evaluation set: --on, a split
    name of the runs' datasets or a folder of images, by default the first run's val split;
  - their accuracy (AuC) curves overlaid, their validation loss and mean IoU curves overlaid;
  - the same photos (the first run's best and worst by AuC) colorized by every run, side by side.
An evaluation that is missing is made through the Luigi graph's Evaluate task, the code
`colorize-fcn evaluate` runs (inference.evaluations); --no-evaluate prints those commands instead.
"""
import base64
import csv
import html
import io
import json
import sys
from pathlib import Path

from models.registry import DEFAULT_TEMPERATURE

from .evaluated import as_target, describe_evaluation
from .evaluations import PROG, RunFolderError, evaluate_command, evaluate_runs, find_evaluation, run_identity

MODEL = "model/annealed"       # the curve and the gallery's ranking
THUMB = 160                    # gallery thumbnails' longer side, px


# ----------------------------------------------------------------------------- what is compared
def differing_settings(idents) -> dict:
    """{setting: [value per run]} for arch, dataset and every config key whose values differ."""
    rows = [{"arch": i["arch"], "dataset": i["dataset"], **i["cfg"]} for i in idents]
    keys = sorted(set().union(*rows), key=lambda k: (k not in ("arch", "dataset", "config"), k))
    return {k: [r.get(k) for r in rows] for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1}


def read_log(run_dir) -> list:
    """log.csv rows with numbers as floats ([] without a log)."""
    try:
        with open(Path(run_dir) / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []
    out = []
    for r in rows:
        try:
            out.append({"iteration": float(r["iteration"]), "split": r["split"], "loss": float(r["loss"]),
                        "mean_iu": float(r["mean_iu"])})
        except (KeyError, TypeError, ValueError):
            continue
    return out


def gallery_paths(metrics, n: int) -> list:
    """The first run's best and worst images by per-image AuC of MODEL (relative paths), n in all."""
    ranked = sorted(metrics["per_image"], key=lambda p: p["auc"][MODEL], reverse=True)
    picks = ranked[:(n + 1) // 2] + ranked[::-1][:n // 2]
    seen = []
    for p in picks:
        if p["path"] not in seen:
            seen.append(p["path"])
    return seen


# ----------------------------------------------------------------------------- figures
def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), dpi=90)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(111)


def _png_uri(fig=None, image=None) -> str:
    buf = io.BytesIO()
    if fig is not None:
        fig.tight_layout()
        fig.savefig(buf, format="png")
    else:
        image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def auc_figure(labels, metrics) -> str:
    fig, ax = _figure()
    first = metrics[0]
    ax.plot(first["thresholds"], first["methods"]["gray"]["curve"], ":", color="gray",
            label=f"gray (AuC {first['methods']['gray']['auc']:.1f}%)")
    for label, m in zip(labels, metrics):
        line, = ax.plot(m["thresholds"], m["methods"][MODEL]["curve"], "-",
                        label=f"{label}: {MODEL} ({m['methods'][MODEL]['auc']:.1f}%)")
        ax.plot(m["thresholds"], m["methods"]["oracle/annealed"]["curve"], "--", color=line.get_color(),
                alpha=0.5, label=f"{label}: oracle ({m['methods']['oracle/annealed']['auc']:.1f}%)")
    ax.set_xlabel("threshold t on the a/b error (CIELab units)")
    ax.set_ylabel("fraction of pixels with error <= t")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png_uri(fig)


def curve_figure(labels, logs, key, ylabel) -> str:
    fig, ax = _figure()
    for label, rows in zip(labels, logs):
        color = None                   # one colour per run: validation solid, training dotted
        for split, style in (("valid", "-o"), ("train", ":")):
            pts = [(r["iteration"], r[key]) for r in rows if r["split"] == split]
            if pts:
                line, = ax.plot(*zip(*pts), style, markersize=3, color=color, label=f"{label} {split}")
                color = line.get_color()
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png_uri(fig)


def gallery_rows(runs, root, paths, device) -> list:
    """[(path, [gray, run 1, ..., truth] as data URIs, or None and the reason)] for each photo."""
    from PIL import Image, ImageOps
    from .api import load_colorizer
    models = [load_colorizer(r, device) for r in runs]
    rows = []
    for rel in paths:
        try:
            with Image.open(Path(root) / rel) as im:
                truth = ImageOps.exif_transpose(im).convert("RGB")
        except OSError as e:
            rows.append((rel, None, f"cannot read it now: {' '.join(str(e).split())}"))
            continue
        truth.thumbnail((THUMB * 2, THUMB * 2))
        panels = [truth.convert("L").convert("RGB"), *(m.colorize(truth) for m in models), truth]
        uris = []
        for p in panels:
            scale = THUMB / max(p.size)
            uris.append(_png_uri(image=p.resize((max(1, round(p.width * scale)), max(1, round(p.height * scale))),
                                                Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)))
        rows.append((rel, uris, None))
    return rows


# ----------------------------------------------------------------------------- the page
def _fmt(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else html.escape(str(x))


def page(labels, runs, idents, metrics, logs, gallery, on_text) -> str:
    e = html.escape
    key_rows = "".join(f"<tr><th>{e(lb)}</th><td>{e(Path(r).name)}</td><td>{e(i['arch'])}</td>"
                       f"<td>{i['config']}</td><td>{e(json.dumps(i['overrides']) if i['overrides'] else '-')}</td></tr>"
                       for lb, r, i in zip(labels, runs, idents))
    diff = differing_settings(idents)
    diff_rows = "".join(f"<tr><th>{e(k)}</th>" + "".join(f"<td>{e(json.dumps(v))}</td>" for v in vals) + "</tr>"
                        for k, vals in diff.items()) or f"<tr><td colspan='{len(runs) + 1}'>none</td></tr>"
    head = "".join(f"<th colspan='2'>{e(lb)}</th>" for lb in labels)
    sub = "<th>AuC %</th><th>PSNR dB</th>" * len(labels)
    method_rows = "".join(
        f"<tr><td>{e(name)}</td>" + "".join(f"<td>{_fmt(m['methods'][name]['auc'])}</td>"
                                            f"<td>{_fmt(m['methods'][name]['psnr'])}</td>" for m in metrics) + "</tr>"
        for name in metrics[0]["methods"])
    seen = "".join(f"<li>{e(lb)}: {e(describe_evaluation(m.get('evaluated_on')))}</li>"
                   for lb, m in zip(labels, metrics))
    gal = [f"<tr><th>photo</th><th>gray input</th>{''.join(f'<th>{e(lb)}</th>' for lb in labels)}"
           f"<th>ground truth</th></tr>"]
    for rel, uris, why in gallery:
        cells = "".join(f"<td><img class='photo' src='{u}'></td>" for u in uris) if uris else \
            f"<td colspan='{len(labels) + 2}'>{e(why)}</td>"
        gal.append(f"<tr><td>{e(rel)}</td>{cells}</tr>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Compare {len(runs)} runs</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img.photo{{image-rendering:pixelated}}</style></head><body>
<h1>Compare {len(runs)} runs on {e(on_text)}</h1>
<table id="runs"><tr><th></th><th>run</th><th>arch</th><th>config</th><th>overrides</th></tr>{key_rows}</table>
<h2>Settings that differ</h2>
<table id="settings"><tr><th>setting</th>{''.join(f'<th>{e(lb)}</th>' for lb in labels)}</tr>{diff_rows}</table>
<h2>Metrics</h2><ul>{seen}</ul>
<table id="metrics"><tr><th rowspan="2">method</th>{head}</tr><tr>{sub}</tr>{method_rows}</table>
<h2>Accuracy curves</h2><img id="auc" src="{auc_figure(labels, metrics)}" alt="accuracy curves">
<h2>Training curves</h2><img id="loss" src="{curve_figure(labels, logs, 'loss', 'loss')}" alt="loss">
<img id="iou" src="{curve_figure(labels, logs, 'mean_iu', 'mean IoU')}" alt="mean IoU">
<h2>The same photos, colorized by each run ({MODEL.split('/')[1]} decoder)</h2>
<table id="gallery">{''.join(gal)}</table>
</body></html>
"""


# ----------------------------------------------------------------------------- the command
def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="one HTML page comparing runs: settings, metrics, curves, photos",
                       description="Compare finished runs on one evaluation set: the settings that differ, "
                                   "a metrics table, AuC / loss / IoU curves overlaid and the same photos "
                                   "colorized by each run. Missing evaluations are made first (Luigi's "
                                   "Evaluate task, as `colorize-fcn evaluate`).",
                       epilog="exit status: 0 page written, 1 evaluations missing with --no-evaluate (their "
                              "commands are printed), 2 bad arguments or not finished run folders, 30/35 "
                              "an evaluation failed")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders (one work dir)")
    p.add_argument("--on", default=None, metavar="SPLIT|DIR",
                   help="a split name of the runs' datasets or a folder of images (default: the first "
                        "run's val split)")
    p.add_argument("--out", default="compare.html", help="the page to write (default compare.html)")
    p.add_argument("--gallery", type=int, default=4, help="photos shown (default 4)")
    p.add_argument("--no-evaluate", action="store_true", help="print the commands of missing evaluations "
                                                                "instead of running them")
    p.add_argument("--device", default=None, help="default: luigi.cfg [colorize] device")
    p.set_defaults(func=cmd_compare)


def compare(runs, on=None, out="compare.html", n_gallery=4, evaluate=True, device=None, log=print) -> int:
    """Write the page; the exit code (module docstring of inference.cli: 0, 1, 2, 30, 35)."""
    idents = [run_identity(r) for r in runs]
    on = as_target(on) if on is not None else idents[0]["cfg"]["val_split"]   # the first run's split
    missing = [r for r in runs if find_evaluation(r, on, DEFAULT_TEMPERATURE) is None]
    if missing and not evaluate:
        for r in missing:
            log(evaluate_command(r, on))
        return 1
    if missing:
        code = evaluate_runs([(r, on) for r in missing], device=device)
        if code:
            return code
    found = [find_evaluation(r, on, DEFAULT_TEMPERATURE) for r in runs]
    metrics = [json.loads((f / "metrics.json").read_text()) for f in found]
    rec = metrics[0].get("evaluated_on") or {}
    root = rec.get("folder") or rec.get("dataset")
    labels = [chr(ord("A") + i) if i < 26 else f"R{i}" for i in range(len(runs))]
    gallery = gallery_rows(runs, root, gallery_paths(metrics[0], n_gallery), device or "auto") if root else []
    text = page(labels, runs, idents, metrics, [read_log(r) for r in runs], gallery,
                describe_evaluation(rec) if rec else str(on))
    from pipeline.atomic import write_text_atomic
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    log(f"{PROG}: compared {len(runs)} runs on {describe_evaluation(rec) if rec else on}: {out}")
    return 0


def cmd_compare(args) -> int:
    try:
        return compare(args.runs, args.on, args.out, args.gallery, not args.no_evaluate, args.device)
    except (RunFolderError, OSError) as e:
        sys.stderr.write(f"{PROG}: error: {' '.join(str(e).split())}\n")
        return 2
