"""Colorization metrics and the evaluation report of a trained run.

Every val image (at the network's size, from the Lab + label shards) is
colorized by several methods, all merged with the image's own lightness:

  model/max, model/mean, model/annealed   the network's posteriors, each decoder
  gray                                    a = b = 0 (the grayscale baseline)
  oracle/max, oracle/mean, oracle/annealed  the TARGET posteriors (upsampled to the
                                          image size as the loss does), decoded:
                                          the best the clusters + decoder allow

Metrics per method:
  auc        raw accuracy AuC (Zhang et al.): per-pixel Euclidean a/b error in
             CIELab units; the fraction of pixels with error <= t for
             t = 0, 1, ..., 150; the area under that curve (trapezoid rule)
             divided by 150, in %.  Pixels are POOLED over the whole split
             (every pixel counts once, so large images weigh more -- here all
             have the same size).  Identical a/b planes give 100%.
  psnr       PSNR of the RGB uint8 image against the ground truth RGB (the
             shard's L and a/b converted the same way), per image, then
             averaged.  An identical image has an infinite PSNR; per-image
             values are capped at PSNR_CAP (100 dB) for the mean and the
             number of identical images is reported (psnr_identical).
  pixel_acc, mean_iou  of the argmax clusters against the argmax target
             clusters (train.metrics scores of the pooled confusion matrix).
             The model rows share them (the decoder does not change the
             argmax); gray uses the cluster most probable for a = b = 0 at every
             pixel; the oracle is the target itself (1.0 by construction).

Non-finite numbers are written to JSON as strings ("inf", "nan").
"""
import html
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .color import ab_to_hue_chroma, lab_to_rgb
from .decode import DECODERS, DEFAULT_DECODER, DEFAULT_TEMPERATURE, cluster_centres_ab, decode
from .gmm import posteriors, save_gmm

AUC_MAX = 150
THRESHOLDS = np.arange(AUC_MAX + 1)          # 0, 1, ..., 150 CIELab units
PSNR_CAP = 100.0                             # dB, used for identical images in the mean


# ----------------------------------------------------------------------------- metrics
def ab_error(ab_pred, ab_true) -> np.ndarray:
    """Per-pixel Euclidean distance (h, w) float64 between (2, h, w) a/b planes."""
    d = np.asarray(ab_pred, np.float64) - np.asarray(ab_true, np.float64)
    return np.sqrt((d ** 2).sum(axis=0))


def error_histogram(err) -> np.ndarray:
    """(AUC_MAX + 2,) int64 counts of ceil(error): entry t counts pixels with t-1 < e <= t,
    the last entry every pixel with e > AUC_MAX.  Its cumulative sum at t is the number of
    pixels within t (for integer t, e <= t <=> ceil(e) <= t): exact, and poolable."""
    bins = np.minimum(np.ceil(np.asarray(err, np.float64)), AUC_MAX + 1).astype(np.int64).ravel()
    return np.bincount(bins, minlength=AUC_MAX + 2)


def accuracy_curve(hist) -> np.ndarray:
    """(151,) fraction of pixels with error <= t, t = 0..150, from error_histogram counts."""
    hist = np.asarray(hist, np.float64)
    total = hist.sum()
    if total == 0:
        return np.full(len(THRESHOLDS), np.nan)
    return np.cumsum(hist)[:len(THRESHOLDS)] / total


def auc_percent(curve) -> float:
    """Area under the accuracy curve over [0, 150], normalised to 100%."""
    curve = np.asarray(curve, np.float64)
    area = float(((curve[1:] + curve[:-1]) / 2).sum())          # trapezoid rule, unit spacing
    return 100.0 * area / AUC_MAX


def raw_accuracy_auc(ab_pred, ab_true) -> float:
    """Raw accuracy AuC (%) of one prediction (pixels of this image only)."""
    return auc_percent(accuracy_curve(error_histogram(ab_error(ab_pred, ab_true))))


def psnr(rgb_pred, rgb_true) -> float:
    """PSNR in dB of two uint8 RGB images; math.inf when they are identical."""
    a, b = np.asarray(rgb_pred), np.asarray(rgb_true)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def mean_psnr(values, cap: float = PSNR_CAP) -> dict:
    """{'psnr': mean of per-image PSNRs capped at `cap`, 'psnr_identical': how many were inf}."""
    values = np.asarray(list(values), np.float64)
    if len(values) == 0:
        return {"psnr": math.nan, "psnr_identical": 0}
    return {"psnr": float(np.minimum(values, cap).mean()), "psnr_identical": int(np.isinf(values).sum())}


def json_safe(obj):
    """Replace non-finite floats by the strings 'inf', '-inf', 'nan' (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else ("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|\"-?inf\"|\"nan\")(?:,\s*(?:-?[\d.eE+-]+|\"-?inf\"|\"nan\"))*)\s*\]")


def dumps(obj) -> str:
    """Strict JSON, indented, with lists of numbers kept on one line."""
    text = json.dumps(json_safe(obj), indent=1, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


# ----------------------------------------------------------------------------- methods
def method_names(decoders=DECODERS):
    return ([f"model/{d}" for d in decoders] + ["gray"] + [f"oracle/{d}" for d in decoders])


def gray_label(gmm) -> int:
    """The cluster most probable for a = b = 0 (the grayscale baseline's label)."""
    return int(np.argmax(posteriors(ab_to_hue_chroma(np.zeros(1), np.zeros(1)), gmm)[0]))


def colorize_batch(model, L, targets, mean_L, gmm, device, temperature=DEFAULT_TEMPERATURE,
                   decoders=DECODERS) -> dict:
    """Every method on a batch: L (N, S, S), targets (N, K, s, s) ->
    {"ab": {method: (N, 2, S, S) float32}, "labels": {method: (N, S, S) int64},
     "target_labels": (N, S, S) int64}, all numpy."""
    import torch
    from train.loop import upsample_targets
    from .colorize import predict_posteriors
    L = np.asarray(L, np.float32)
    n, size = L.shape[0], L.shape[-1]
    centres = cluster_centres_ab(gmm)
    post = predict_posteriors(model, L, mean_L, device)                       # (N, K, S, S)
    with torch.inference_mode():
        target = upsample_targets(torch.as_tensor(np.asarray(targets, np.float32)).to(device), (size, size))
        ab, labels = {}, {}
        for d in decoders:
            ab[f"model/{d}"] = decode(post, centres, d, temperature).cpu().numpy()
            ab[f"oracle/{d}"] = decode(target, centres, d, temperature).cpu().numpy()
        pred_labels = post.argmax(1).cpu().numpy()
        target_labels = target.argmax(1).cpu().numpy()
    ab["gray"] = np.zeros((n, 2, size, size), np.float32)
    for d in decoders:
        labels[f"model/{d}"] = pred_labels
        labels[f"oracle/{d}"] = target_labels
    labels["gray"] = np.full_like(target_labels, gray_label(gmm))
    return {"ab": ab, "labels": labels, "target_labels": target_labels}


def _rgb(L, ab):
    return lab_to_rgb(np.concatenate([np.asarray(L, np.float32)[..., None], np.moveaxis(ab, 0, -1)], axis=-1))


class _Stats:
    """Pooled counts of one method over a split."""

    def __init__(self, n_classes):
        self.hist = np.zeros(AUC_MAX + 2, np.int64)
        self.conf = np.zeros((n_classes, n_classes), np.int64)
        self.psnr, self.auc = [], []
        self.k = n_classes

    def add(self, ab, ab_true, rgb, rgb_true, labels, target_labels):
        h = error_histogram(ab_error(ab, ab_true))
        self.hist += h
        self.auc.append(auc_percent(accuracy_curve(h)))
        self.psnr.append(psnr(rgb, rgb_true))
        self.conf += np.bincount(target_labels.ravel() * self.k + labels.ravel(),
                                 minlength=self.k ** 2).reshape(self.k, self.k)

    def summary(self) -> dict:
        from train.metrics import scores
        curve = accuracy_curve(self.hist)
        seg = scores(self.conf)
        return {"auc": auc_percent(curve), **mean_psnr(self.psnr),
                "pixel_acc": seg["acc"], "mean_iou": seg["mean_iu"], "curve": curve.tolist()}


def evaluate_images(model, dataset, mean_L, gmm, device, temperature=DEFAULT_TEMPERATURE,
                    batch_size: int = 8, on_image=None) -> dict:
    """Metrics of every method over every image of `dataset` (a train.data.ShardDataset, or
    anything with len() and get_visual(i) -> {L, ab, posteriors, path})."""
    n_classes = len(gmm["weights"])
    names = method_names()
    stats = {m: _Stats(n_classes) for m in names}
    per_image = []
    n = len(dataset)
    for start in range(0, n, batch_size):
        items = [dataset.get_visual(i) for i in range(start, min(n, start + batch_size))]
        L = np.stack([v["L"] for v in items])
        out = colorize_batch(model, L, np.stack([v["posteriors"] for v in items]), mean_L, gmm, device,
                             temperature)
        for j, v in enumerate(items):
            rgb_true = _rgb(v["L"], v["ab"])
            row = {"path": v["path"], "auc": {}, "psnr": {}}
            for m in names:
                st = stats[m]
                st.add(out["ab"][m][j], v["ab"], _rgb(v["L"], out["ab"][m][j]), rgb_true,
                       out["labels"][m][j], out["target_labels"][j])
                row["auc"][m], row["psnr"][m] = st.auc[-1], st.psnr[-1]
            per_image.append(row)
            if on_image:
                on_image(len(per_image), n)
    size = int(items[0]["L"].shape[-1]) if n else 0
    return {"n_images": n, "image_size": size, "n_pixels": n * size * size,
            "thresholds": THRESHOLDS.tolist(), "temperature": float(temperature),
            "methods": {m: stats[m].summary() for m in names}, "per_image": per_image}


# ----------------------------------------------------------------------------- report
GALLERY_COLUMNS = ("gray", "model/max", "model/mean", "model/annealed", "oracle/annealed", "ground truth")


def _upscale(img, min_side=128):
    k = max(1, math.ceil(min_side / max(1, min(img.shape[:2]))))
    return img.repeat(k, 0).repeat(k, 1) if k > 1 else img


def gallery_rows(model, dataset, indices, mean_L, gmm, device, temperature) -> list:
    """One (H, W, 3) uint8 strip per index: GALLERY_COLUMNS left to right."""
    from train.visual import hstack
    rows = []
    for i in indices:
        v = dataset.get_visual(i)
        out = colorize_batch(model, v["L"][None], v["posteriors"][None], mean_L, gmm, device, temperature)
        panels = [_rgb(v["L"], out["ab"][m][0]) for m in GALLERY_COLUMNS[:-1]] + [_rgb(v["L"], v["ab"])]
        rows.append(hstack([_upscale(p) for p in panels]))
    return rows


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
<h2>Metrics ({metrics['n_images']} images of split '{e(str(info.get('split', '?')))}', {metrics['image_size']}&times;{metrics['image_size']})</h2>
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


def write_report(out_dir, metrics, info, model, dataset, mean_L, gmm, device, run_dir=None,
                 n_gallery: int = 4, rank_by: str = DEFAULT_DECODER) -> dict:
    """Figures (auc.png, gallery/*.png, copies of the run's loss.png / iou.png) and report.html
    into out_dir (an existing folder); returns {name: relative file}."""
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
        rows = gallery_rows(model, dataset, idx, mean_L, gmm, device, metrics["temperature"]) if idx else []
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


# ----------------------------------------------------------------------------- one run
def evaluate_run(run_dir, out_dir, val_pairs, gmm, mean_L, temperature=DEFAULT_TEMPERATURE,
                 n_gallery: int = 4, device="auto", batch_size: int = 8, info=None, on_image=None) -> dict:
    """Evaluate run_dir/best.pt on the (Lab shard, label shard) pairs; write out_dir atomically:
    metrics.json, report.html, auc.png, gallery/, loss.png + iou.png (copied from the run),
    gmm.npz (the run's mixture, so `colorize-fcn colorize` finds it).  Returns the metrics."""
    from train.data import ShardDataset
    from train.loop import load_model_from_checkpoint
    from .colorize import resolve_device
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model = load_model_from_checkpoint(run_dir / "best.pt", dev).eval()
    dataset = ShardDataset(val_pairs, mean_L, flip=False)
    try:
        if len(dataset) == 0:
            raise ValueError("the evaluation split has no images")
        if dataset.n_classes != len(gmm["weights"]):
            raise ValueError(f"label shards have K={dataset.n_classes}, the GMM {len(gmm['weights'])}")
        metrics = evaluate_images(model, dataset, mean_L, gmm, dev, temperature, batch_size, on_image)
        metrics.update(run_dir=str(run_dir), checkpoint=str(run_dir / "best.pt"), mean_L=float(mean_L),
                       device=str(dev))
        info = {"run": run_dir.name, "run_dir": str(run_dir), **(info or {}), "mean_L": round(float(mean_L), 3),
                "device": str(dev)}
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            files = write_report(tmp, metrics, info, model, dataset, mean_L, gmm, dev, run_dir, n_gallery)
            save_gmm(tmp / "gmm.npz", gmm)
            metrics["files"] = {**files, "gmm": "gmm.npz"}
            write_text_atomic(tmp / "metrics.json", dumps(metrics) + "\n")
    finally:
        dataset.close()
    return metrics
