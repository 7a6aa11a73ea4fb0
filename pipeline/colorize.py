"""Colorize arbitrary images with a trained run: the work behind `colorize-fcn colorize`.

For every input (any size and aspect, grayscale or colour -- colour is reduced
to its lightness first):

  1. decode it (EXIF orientation applied, any PIL mode converted as the training
     data was: pipeline.images), and compute its FULL-resolution Lab lightness;
  2. resize the image to the run's im_size x im_size (the network's size; the
     training images were made the same way: resize in sRGB, then Lab) and take
     that lightness, minus the run's mean lightness, as the network input;
  3. predict the cluster posteriors, decode them to a/b (pipeline.decode), resize
     the a/b planes back to the input's size (bilinear) and merge them with the
     full-resolution lightness, so the output keeps every detail of the input.

Images are decoded and written in threads while the network runs batches (on
the GPU when present).  A file that cannot be read is reported and skipped.

What a run must provide besides best.pt: the GMM (cluster centres) and the mean
lightness.  `load_colour_model` looks for them, in this order:
  GMM:     --gmm PATH; best.pt's "gmm" entry; <run>/gmm.npz; config.json
           data.gmm; <run>-evaluate-*/gmm.npz (written by the Evaluate task);
           the fixed grid for binning 'uniform'; the single matching
           <work>/gmm/*/s<size>/<binning>-k<K>-*.npz.
  mean L:  --mean-l X; best.pt's "mean_L"; config.json data.mean_L;
           <run>-evaluate-*/metrics.json mean_L.
"""
import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .color import lab_to_rgb, rgb_to_lab
from .decode import DEFAULT_DECODER, DEFAULT_TEMPERATURE, cluster_centres_ab, decode
from .gmm import load_gmm, uniform_grid

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
_ROWS = 512              # rows converted at a time (bounds float64 temporaries on huge images)
_GLOB_CHARS = set("*?[")


class InputError(Exception):
    """An input that cannot be colorized; the message is one line."""


class ModelError(Exception):
    """The model (or what it needs: GMM, mean lightness) cannot be loaded."""


# ----------------------------------------------------------------------------- model
@dataclass
class ColourModel:
    """A trained network plus everything needed to turn its output into colour."""
    model: object
    mean_L: float
    gmm: dict
    im_size: int
    device: object
    cfg: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)      # where the GMM / mean L came from

    @property
    def centres_ab(self) -> np.ndarray:
        return cluster_centres_ab(self.gmm)


def resolve_device(device="auto", warn=None):
    """'auto' -> cuda when available, else cpu; a CUDA request without CUDA falls back to cpu."""
    import torch
    want = str(device or "auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    elif want.startswith("cuda") and not torch.cuda.is_available():
        if warn:
            warn(f"device {device!r} requested but CUDA is not available: using the CPU")
        want = "cpu"
    return torch.device(want)


def checkpoint_path(model_path) -> Path:
    """A run folder (-> its best.pt) or a checkpoint file."""
    p = Path(model_path)
    if p.is_dir():
        p = p / "best.pt"
    if not p.is_file():
        raise ModelError(f"no checkpoint at {p} (give a run folder holding best.pt, or a .pt file)")
    return p


def _gmm_from_dict(d) -> dict:
    gmm = {k: np.asarray(d[k].cpu() if hasattr(d[k], "cpu") else d[k], dtype=np.float64)
           for k in ("weights", "means", "covariances")}
    k = len(gmm["weights"])
    if gmm["means"].shape != (k, 2) or gmm["covariances"].shape != (k, 2, 2):
        raise ModelError(f"not a hue/chroma mixture: shapes {gmm['means'].shape}, {gmm['covariances'].shape}")
    return gmm


def _evaluate_dirs(run_dir: Path):
    """The run's sibling Evaluate folders, newest first."""
    found = [p for p in run_dir.parent.glob(f"{run_dir.name}-evaluate-*") if p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_gmm(run_dir: Path, ckpt: dict, config: dict, cfg: dict, n_classes: int):
    """(gmm, where it came from) for a run; see the module docstring for the order."""
    if isinstance(ckpt.get("gmm"), dict):
        return _gmm_from_dict(ckpt["gmm"]), "checkpoint"
    if (run_dir / "gmm.npz").is_file():
        return load_gmm(run_dir / "gmm.npz"), str(run_dir / "gmm.npz")
    if isinstance(config.get("data", {}).get("gmm"), dict):
        return _gmm_from_dict(config["data"]["gmm"]), f"{run_dir / 'config.json'} data.gmm"
    for folder in _evaluate_dirs(run_dir):
        if (folder / "gmm.npz").is_file():
            return load_gmm(folder / "gmm.npz"), str(folder / "gmm.npz")
    binning, size = cfg.get("binning", "soft"), cfg.get("im_size")
    if binning == "uniform":
        return uniform_grid(n_classes), "uniform grid (data independent)"
    work = run_dir.parent.parent
    candidates = sorted(work.glob(f"gmm/*/s{size}/{binning}-k{n_classes}-*.npz"))
    if len(candidates) == 1:
        return load_gmm(candidates[0]), f"{candidates[0]} (only {binning} K={n_classes} mixture in {work})"
    listed = f": {', '.join(map(str, candidates))}" if candidates else ""
    raise ModelError(f"cannot find the GMM of run {run_dir}: none saved with the run and "
                     f"{len(candidates)} candidate(s) under {work / 'gmm'}{listed}; pass --gmm PATH "
                     f"(or build the Evaluate task for this run, which saves it)")


def find_mean_L(run_dir: Path, ckpt: dict, config: dict):
    if ckpt.get("mean_L") is not None:
        return float(ckpt["mean_L"]), "checkpoint"
    if config.get("data", {}).get("mean_L") is not None:
        return float(config["data"]["mean_L"]), str(run_dir / "config.json")
    for folder in _evaluate_dirs(run_dir):
        try:
            return float(json.loads((folder / "metrics.json").read_text())["mean_L"]), str(folder)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise ModelError(f"cannot find the mean lightness of run {run_dir}: pass --mean-l X")


def load_colour_model(model_path, device="auto", gmm_path=None, mean_L=None, warn=None) -> ColourModel:
    """Load best.pt (weights_only) and locate its GMM and mean lightness."""
    from train.checkpoint import load_checkpoint
    from models.fcn import build_model
    path = checkpoint_path(model_path)
    try:
        ckpt = load_checkpoint(path)
    except RuntimeError as e:
        raise ModelError(str(e).splitlines()[0]) from None
    if "model" not in ckpt or "model_settings" not in ckpt:
        raise ModelError(f"{path} is not a colorize-fcn checkpoint (no model / model_settings)")
    run_dir = path.parent
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    cfg = dict(ckpt.get("cfg") or config.get("cfg") or {})
    settings = dict(ckpt["model_settings"])
    if "im_size" not in cfg:
        raise ModelError(f"{path}: the checkpoint carries no cfg with im_size")
    sources = {}
    if gmm_path:
        gmm, sources["gmm"] = load_gmm(gmm_path), str(gmm_path)
    else:
        gmm, sources["gmm"] = find_gmm(run_dir, ckpt, config, cfg, settings["n_classes"])
    if len(gmm["weights"]) != settings["n_classes"]:
        raise ModelError(f"GMM {sources['gmm']} has K={len(gmm['weights'])}, the model {settings['n_classes']}")
    if mean_L is not None:
        mean_L, sources["mean_L"] = float(mean_L), "given"
    else:
        mean_L, sources["mean_L"] = find_mean_L(run_dir, ckpt, config)
    dev = resolve_device(device, warn)
    model = build_model(**settings)
    model.load_state_dict(ckpt["model"])
    model.to(dev).eval()
    return ColourModel(model=model, mean_L=float(mean_L), gmm=gmm, im_size=int(cfg["im_size"]),
                       device=dev, cfg=cfg, sources=sources)


def predict_posteriors(model, L, mean_L: float, device):
    """(N, S, S) lightness (numpy or tensor) -> (N, K, S, S) float32 softmax posteriors on `device`."""
    import torch
    with torch.inference_mode():
        x = (torch.as_tensor(np.asarray(L, np.float32)) - float(mean_L))[:, None].to(device)
        if device.type == "cuda":
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                scores = model(x)
        else:
            scores = model(x)
        return torch.softmax(scores.float(), dim=1)


# ----------------------------------------------------------------------------- images
@dataclass
class LoadedImage:
    L_full: np.ndarray      # (H, W) float32 lightness at the input's resolution
    L_small: np.ndarray     # (S, S) float32 lightness of the image resized to the network's size


def _one_line(e) -> str:
    msg = str(e).strip() or type(e).__name__
    return " ".join(msg.split())


def read_rgb(path):
    """Any image file -> PIL RGB image, EXIF orientation applied (as the training data)."""
    from PIL import Image, ImageOps
    from .images import DEFAULT_MAX_PIXELS, _to_rgb
    path = Path(path)
    if not path.exists():
        raise InputError("no such file")
    if not path.is_file():
        raise InputError("not a regular file")
    try:
        with open(path, "rb") as fh:
            im = Image.open(fh)
            if im.size[0] * im.size[1] > DEFAULT_MAX_PIXELS:
                raise InputError(f"{im.size[0]} x {im.size[1]} pixels exceeds the limit of {DEFAULT_MAX_PIXELS}")
            im.load()
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:                        # corrupt EXIF: keep the stored orientation
                pass
            return _to_rgb(im)
    except InputError:
        raise
    except Image.UnidentifiedImageError:
        raise InputError("not a recognised image file") from None
    except Exception as e:                            # decode errors of every kind
        raise InputError(f"cannot decode: {_one_line(e)}") from None


def lightness(rgb) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 Lab lightness, converted in row blocks."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    out = np.empty(rgb.shape[:2], np.float32)
    for r in range(0, rgb.shape[0], _ROWS):
        out[r:r + _ROWS] = rgb_to_lab(rgb[r:r + _ROWS])[..., 0]
    return out


def load_image(path, im_size: int) -> LoadedImage:
    from PIL import Image
    from .images import REDUCING_GAP, RESAMPLE
    im = read_rgb(path)
    small = im.resize((im_size, im_size), RESAMPLE, reducing_gap=REDUCING_GAP)
    return LoadedImage(L_full=lightness(np.asarray(im)), L_small=rgb_to_lab(np.asarray(small))[..., 0])


def merge_lightness(L_full, ab_small):
    """Full-resolution lightness (H, W) + a/b (2, s, s) predicted at the network's size
    -> (H, W, 3) uint8 RGB; a/b are resized to (H, W) bilinearly."""
    import torch
    import torch.nn.functional as F
    L_full = np.asarray(L_full, np.float32)
    h, w = L_full.shape
    ab = torch.as_tensor(ab_small).float()
    if tuple(ab.shape[-2:]) != (h, w):
        ab = F.interpolate(ab[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    ab = ab.cpu().numpy()
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, _ROWS):
        lab = np.concatenate([L_full[r:r + _ROWS, :, None], np.moveaxis(ab[:, r:r + _ROWS], 0, -1)], axis=-1)
        out[r:r + _ROWS] = lab_to_rgb(lab)
    return out


def save_png(path, rgb) -> None:
    from PIL import Image
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, np.uint8)).save(tmp, format="PNG", compress_level=3)


# ----------------------------------------------------------------------------- inputs
def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _folder_images(folder: Path, skip: Path = None):
    """Image files below `folder` (by extension; hidden names ignored), sorted, skipping `skip`."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not _is_image_name(p.name):
            continue
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file():
            out.append((p, rel))
    return out


def collect_inputs(inputs, out_dir):
    """Files, folders (recursively, image extensions only) and glob patterns ->
    ([(source, output path)], [(input, error message)]).

    Outputs are PNGs under out_dir: a folder's files keep their path relative to
    it, other files their name; clashing names get a -2, -3, ... suffix."""
    import glob
    out_dir = Path(out_dir)
    skip = out_dir.resolve()
    pairs, errors = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = _folder_images(p.resolve(), skip)
            if not found:
                errors.append((raw, "folder holds no image files"))
            pairs += [(src, rel) for src, rel in found]
        elif p.exists() or not (_GLOB_CHARS & set(str(raw))):
            pairs.append((p, Path(p.name)))          # a missing file is reported when it is read
        else:
            matches = sorted(glob.glob(str(raw), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                errors.append((raw, "no file matches this pattern"))
            pairs += [(f, Path(f.name)) for f in files]
    items, used, seen = [], set(), set()
    for src, rel in pairs:
        key = Path(src).resolve()
        if key in seen:
            continue
        seen.add(key)
        dst = out_dir / rel.with_suffix(".png")
        n = 2
        while dst in used:
            dst = out_dir / rel.with_name(f"{rel.stem}-{n}.png")
            n += 1
        used.add(dst)
        items.append((Path(src), dst))
    return items, errors


# ----------------------------------------------------------------------------- the loop
def colorize_items(cm: ColourModel, items, decoder=DEFAULT_DECODER, temperature=DEFAULT_TEMPERATURE,
                   batch_size: int = 8, threads: int = 4, on_done=None, on_error=None) -> dict:
    """Colorize [(source, output png)]; returns {"ok": n, "failed": [(source, message)]}.

    Images of the next batch are decoded (threads) while the current one runs on the
    network; outputs are merged and written in threads too.  on_done(src, dst) and
    on_error(src, message) are called once per item."""
    if decoder not in ("max", "mean", "annealed"):
        raise ValueError(f"unknown decoder {decoder!r}")
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    batch_size = max(1, int(batch_size))
    failed, ok = [], 0
    centres = cm.centres_ab

    def fail(src, msg):
        failed.append((src, msg))
        if on_error:
            on_error(src, msg)

    def finish(src, dst, L_full, ab):
        """-> (src, dst, None) or (src, dst, error message)."""
        try:
            save_png(dst, merge_lightness(L_full, ab))
        except Exception as e:
            return src, dst, f"cannot write {dst}: {_one_line(e)}"
        return src, dst, None

    def collect(fut) -> int:
        src, dst, err = fut.result()
        if err:
            fail(src, err)
            return 0
        if on_done:
            on_done(src, dst)
        return 1

    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        def submit(chunk):
            return [pool.submit(load_image, src, cm.im_size) for src, _ in chunk]
        loading = submit(chunks[0]) if chunks else []
        writing = []
        for ci, chunk in enumerate(chunks):
            current, loading = loading, (submit(chunks[ci + 1]) if ci + 1 < len(chunks) else [])
            good = []
            for (src, dst), fut in zip(chunk, current):
                try:
                    good.append((src, dst, fut.result()))
                except Exception as e:               # one bad file never stops the rest
                    fail(src, _one_line(e))
            if good:
                post = predict_posteriors(cm.model, np.stack([g[2].L_small for g in good]), cm.mean_L, cm.device)
                ab = decode(post, centres, decoder, temperature).cpu()
                del post
                for i, (src, dst, img) in enumerate(good):
                    writing.append(pool.submit(finish, src, dst, img.L_full, ab[i]))
            # keep at most about one batch of outputs in flight
            while len(writing) > batch_size:
                ok += collect(writing.pop(0))
        for fut in writing:
            ok += collect(fut)
    return {"ok": ok, "failed": failed}


def print_error(src, msg, stream=None):
    (stream or sys.stderr).write(f"colorize-fcn: error: {src}: {msg}\n")
