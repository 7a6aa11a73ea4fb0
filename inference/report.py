"""The evaluation report: report.html, accuracy curves, a best/worst gallery."""
import html
import math
import shutil
from pathlib import Path

import numpy as np

from models.decoders import DECODERS, DEFAULT_DECODER

from .evaluated import describe_evaluation
from .metrics import AUC_MAX, PSNR_CAP

# left to right: the baseline, every decoder of the registry, the oracle, the truth
GALLERY_COLUMNS = ("gray", *(f"model/{d}" for d in DECODERS), f"oracle/{DEFAULT_DECODER}", "ground truth")


def upscale(img, min_side=128):
    k = max(1, math.ceil(min_side / max(1, min(img.shape[:2]))))
    return img.repeat(k, 0).repeat(k, 1) if k > 1 else img


def _save_png(path, rgb):
    from PIL import Image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path, format="PNG")


def plot_auc_curves(metrics, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    for name, m in metrics["methods"].items():
        style = "--" if name.startswith("oracle") else (":" if name == "gray" else "-")
        ax.plot(metrics["thresholds"], m["curve"], style, label=f"{name} (AuC {m['auc']:.1f}%)")
    ax.set_xlabel("threshold t on the a/b error (CIELab units)")
    ax.set_ylabel("fraction of pixels with error <= t")
    ax.set_xlim(0, AUC_MAX)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _fmt(x, digits=2):
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


def metrics_table(metrics) -> str:
    """Plain-text table: method | AuC | PSNR | pixel acc | mean IoU."""
    lines = [f"{'method':<18} {'AuC %':>7} {'PSNR dB':>8} {'pix acc':>8} {'mean IoU':>8}"]
    for name, m in metrics["methods"].items():
        lines.append(f"{name:<18} {_fmt(m['auc']):>7} {_fmt(m['psnr']):>8} {_fmt(m['pixel_acc'], 3):>8} "
                     f"{_fmt(m['mean_iou'], 3):>8}")
    return "\n".join(lines)


def _evaluated(metrics, info) -> str:
    """What the metrics were measured on, in words."""
    if metrics.get("evaluated_on"):
        return describe_evaluation(metrics["evaluated_on"])
    return f"{metrics['n_images']} images of split '{info.get('split', '?')}'"


def _html(metrics, info, gallery, figures) -> str:
    e = html.escape
    rows = []
    for n, m in metrics["methods"].items():
        identical = f" ({m['psnr_identical']} identical)" if m["psnr_identical"] else ""
        rows.append(f"<tr><td>{e(n)}</td><td>{_fmt(m['auc'])}</td><td>{_fmt(m['psnr'])}{identical}</td>"
                    f"<td>{_fmt(m['pixel_acc'], 3)}</td><td>{_fmt(m['mean_iou'], 3)}</td></tr>")
    rows = "".join(rows)
    info_rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in info.items())
    parts = [f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation: {e(str(info.get('run', '')))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} img{{image-rendering:pixelated;max-width:100%}}
.note{{color:#444;font-size:90%}}</style></head><body>
<h1>Evaluation of {e(str(info.get('run', '')))}</h1>
<table>{info_rows}</table>
<h2>Metrics on {e(_evaluated(metrics, info))}, {metrics['image_size']}&times;{metrics['image_size']}</h2>
<table><tr><th>method</th><th>raw accuracy AuC (%)</th><th>PSNR (dB)</th><th>pixel acc.</th><th>mean IoU</th></tr>{rows}</table>
<p class="note"><b>AuC</b>: per-pixel Euclidean a/b error in CIELab units; fraction of pixels with error
&le; t for t = 0..150 (step 1); area under that curve (trapezoid rule) divided by 150, in %.
<b>Pixels are pooled over the whole split</b> (not averaged per image).
<b>PSNR</b>: on RGB uint8 against the ground truth at the network's size, per image, then averaged;
identical images (infinite PSNR) count as {PSNR_CAP:g} dB in the mean.
<b>Pixel acc. / mean IoU</b>: argmax clusters against the argmax target clusters, pooled confusion
matrix; the decoders share the model's argmax; <i>gray</i> labels every pixel with the cluster most
probable for a = b = 0; the <i>oracle</i> is the target itself.
<b>model/*</b>: the network's posteriors decoded with max / mean / annealed mean (T = {metrics['temperature']:g});
<b>gray</b>: a = b = 0; <b>oracle/*</b>: the target posteriors decoded the same way.</p>
<h2>Raw accuracy curves</h2><img src="{figures['auc']}" alt="accuracy curves">"""]
    if figures.get("loss") or figures.get("iou"):
        parts.append("<h2>Training curves</h2>")
        for key in ("loss", "iou"):
            if figures.get(key):
                parts.append(f'<img src="{figures[key]}" alt="{key}">')
    cols = " | ".join(GALLERY_COLUMNS)
    for title, entries in (("Best images", gallery["best"]), ("Worst images", gallery["worst"])):
        parts.append(f"<h2>{title} (by per-image AuC of model/{gallery['rank_by']})</h2>"
                     f"<p class='note'>Columns: {e(cols)}</p><table>")
        for g in entries:
            parts.append(f"<tr><td><img src=\"{g['file']}\"></td><td>{e(g['path'])}<br>AuC "
                         f"{_fmt(g['auc'])}%<br>PSNR {_fmt(g['psnr'])} dB<br>gray AuC {_fmt(g['gray_auc'])}%</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir, metrics, info, render_rows, run_dir=None, n_gallery: int = 4,
                 rank_by: str = DEFAULT_DECODER) -> dict:
    """Figures (auc.png, gallery/*.png, copies of the run's loss.png / iou.png) and report.html
    into out_dir (an existing folder); render_rows(indices) -> the gallery strips of those
    images (GALLERY_COLUMNS).  Returns {name: relative file}."""
    out_dir = Path(out_dir)
    figures = {"auc": "auc.png"}
    plot_auc_curves(metrics, out_dir / "auc.png")
    for key in ("loss", "iou"):
        src = Path(run_dir) / f"{key}.png" if run_dir else None
        if src is not None and src.is_file():
            shutil.copyfile(src, out_dir / f"{key}.png")
            figures[key] = f"{key}.png"
    key = f"model/{rank_by}"
    order = sorted(range(len(metrics["per_image"])), key=lambda i: metrics["per_image"][i]["auc"][key])
    n = len(order)                                   # disjoint picks when there are few images
    picks = {"best": order[::-1][:min(n_gallery, (n + 1) // 2)], "worst": order[:min(n_gallery, n // 2)]}
    gallery = {"rank_by": rank_by}
    for which, idx in picks.items():
        rows = render_rows(idx) if idx else []
        gallery[which] = []
        for rank, (i, row) in enumerate(zip(idx, rows), 1):
            name = f"gallery/{which}-{rank:02d}.png"
            _save_png(out_dir / name, row)
            pi = metrics["per_image"][i]
            gallery[which].append({"file": name, "path": pi["path"], "auc": pi["auc"][key],
                                   "psnr": pi["psnr"][key], "gray_auc": pi["auc"]["gray"]})
    (out_dir / "report.html").write_text(_html(metrics, info, gallery, figures))
    return {**figures, "report": "report.html",
            "gallery": [g["file"] for w in ("best", "worst") for g in gallery[w]]}
