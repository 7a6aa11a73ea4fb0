"""What `colorize-fcn serve` holds in memory: the loaded runs, the uploaded images with their
posteriors, and the pictures the page asks for.  No HTTP here (inference/serve.py).

An upload is decoded in memory (never written anywhere) into its RGB image (alpha composited
on white, as `colorize` does) and its full-resolution lightness.  The network runs once per
(image, run): its posteriors (K, S, S) at the run's network size S are kept, so another
decoder or temperature is only a decode (models.decoders) and a merge with the full-resolution
lightness (inference.images.merge_lightness), without the network.  Images are evicted oldest
first once they hold more than `cache_bytes`; an evicted image is a 404 ("upload it again").

The network runs one request at a time (one lock for all runs: one model computes at a time),
with at most `max_waiting` requests queued for it; more get a 503.
"""
import io
import re
import secrets
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.decoders import DECODERS, gray_ab
from pipeline.color import lab_planes_to_rgb, lab_to_rgb

from .images import (InputError, TooManyPixels, as_rgb_image, decode_image, lightness, merge_lightness,
                     small_lightness)
from .serve import CACHE_MB, MAX_PIXELS

MAX_WAITING = 8                    # requests queued for the network beyond the one running
MAX_TEMPERATURE = 100.0            # the annealed mean's T: (0, 100]; the page's slider spans 0.01..1
CLUSTER_L = 70.0                   # lightness at which the cluster map paints each cluster's (a, b)
CLUSTER_MAP_SIDE = 768             # the cluster map's longer side at most (nearest neighbour)
PNG_LEVEL = 1                      # zlib level of served PNGs: the fastest; the page re-fetches on every change
_ID = re.compile(r"[0-9a-f]{16}")


class ServeError(Exception):
    """A request the server refuses: an HTTP status and a one-line message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def display_name(raw) -> str:
    """An upload's name as the page shows it: the last part of whatever path the client sent,
    without control characters, at most 100 characters.  Only ever displayed, never a path."""
    name = re.split(r"[\\/]", str(raw or ""))[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name) if unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".")[:100]
    return name or "image"


@dataclass
class Run:
    id: str                       # "0", "1", ...: the order of --model
    model: object                 # inference.api.ImageColorizer
    info: dict                    # what the page shows of it (run_info)


def run_info(model, checkpoint: Path) -> dict:
    """The page's description of a run, from its checkpoint and its folder's small files."""
    from .runs import read_run
    folder = checkpoint.parent
    row = read_run(folder)
    evals = [e for e in row["evaluations"] if isinstance(e.get("auc"), (int, float))]
    last = evals[-1] if evals else None
    return {"name": folder.name if checkpoint.name == "best.pt" else checkpoint.name,
            "checkpoint": str(checkpoint), "arch": model.colorizer.arch, "config": row["config"],
            "overrides": row["overrides"] or None, "dataset": row["dataset"],
            "iteration": model.iteration, "max_iteration": model.max_iteration,
            "note": model.unfinished_note(), "im_size": model.im_size, "clusters": model.colorizer.n_classes,
            "evaluation": None if last is None else {
                "auc": last["auc"], "n_images": last.get("n_images"), "temperature": last.get("temperature"),
                "folder": last["dir"]}}


@dataclass
class Upload:
    id: str
    name: str
    rgb: Image.Image                             # RGB, the input's size (alpha composited on white)
    L_full: np.ndarray                           # (H, W) float32 lightness
    posteriors: dict = field(default_factory=dict)   # run id -> (K, S, S) float32 CPU tensor

    @property
    def nbytes(self) -> int:
        w, h = self.rgb.size
        return 3 * w * h + self.L_full.nbytes + sum(p.numel() * 4 for p in self.posteriors.values())


def png_bytes(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def cluster_palette(centres_ab) -> np.ndarray:
    """(K, 2) cluster centres -> (K, 3) uint8 sRGB: each centre's (a, b) at lightness CLUSTER_L."""
    ab = np.asarray(centres_ab, np.float32)
    return lab_to_rgb(np.concatenate([np.full((len(ab), 1), CLUSTER_L, np.float32), ab], axis=1))


class Store:
    """The runs, the uploads (least recently used evicted past cache_bytes) and the pictures."""

    def __init__(self, runs, max_pixels=MAX_PIXELS, cache_bytes=CACHE_MB << 20, max_waiting=MAX_WAITING):
        self.runs = {r.id: r for r in runs}
        self.max_pixels, self.cache_bytes, self.max_waiting = int(max_pixels), int(cache_bytes), int(max_waiting)
        self._images = OrderedDict()           # id -> Upload, least recently used first
        self._lock = threading.Lock()          # guards _images and _waiting
        self._network = threading.Lock()       # one network computation at a time
        self._waiting = 0

    # -- uploads ----------------------------------------------------------------------------
    def add(self, data: bytes, name) -> Upload:
        """Decode an uploaded file's bytes; ServeError 400 (not a whole image) or 413 (too many pixels)."""
        if not data:
            raise ServeError(400, "empty upload")
        try:
            im = decode_image(io.BytesIO(data), self.max_pixels)
            rgb = as_rgb_image(im)
        except InputError as e:
            raise ServeError(413 if isinstance(e, TooManyPixels) else 400, str(e)) from None
        except Exception as e:                 # mode conversions of every kind
            raise ServeError(400, f"cannot decode: {' '.join(str(e).split())}") from None
        upload = Upload(secrets.token_hex(8), display_name(name), rgb, lightness(np.asarray(rgb)))
        with self._lock:
            self._images[upload.id] = upload
            self._evict(keep=upload.id)
        return upload

    def get(self, image_id: str) -> Upload:
        with self._lock:
            upload = self._images.get(image_id) if _ID.fullmatch(image_id or "") else None
            if upload is None:
                raise ServeError(404, "no such image (the server restarted or evicted it): upload it again")
            self._images.move_to_end(image_id)
            return upload

    def _evict(self, keep: str) -> None:
        total = sum(u.nbytes for u in self._images.values())
        for image_id in list(self._images):
            if total <= self.cache_bytes:
                break
            if image_id != keep:
                total -= self._images.pop(image_id).nbytes

    def run(self, run_id) -> Run:
        if run_id not in self.runs:
            raise ServeError(404, f"no run {run_id!r}; the runs are {sorted(self.runs)}")
        return self.runs[run_id]

    # -- the network, queued ----------------------------------------------------------------
    def posteriors(self, upload: Upload, run: Run):
        """(K, S, S) posteriors of the image under the run: cached, else computed in turn."""
        post = upload.posteriors.get(run.id)
        if post is not None:
            return post
        with self._lock:
            if self._waiting > self.max_waiting:
                raise ServeError(503, f"busy: {self._waiting} requests are waiting for the model; try again")
            self._waiting += 1
        try:
            with self._network:
                post = upload.posteriors.get(run.id)          # computed while this request waited
                if post is None:
                    L_small = small_lightness(upload.rgb, run.model.im_size)
                    post = run.model.colorizer.posteriors(L_small[None])[0].cpu()
                    upload.posteriors[run.id] = post
        finally:
            with self._lock:
                self._waiting -= 1
                self._evict(keep=upload.id)
        return post

    # -- the pictures -----------------------------------------------------------------------
    def gray_png(self, image_id) -> bytes:
        upload = self.get(image_id)
        h, w = upload.L_full.shape
        return png_bytes(lab_planes_to_rgb(upload.L_full, gray_ab((h, w)))[..., 0])

    def colour_png(self, image_id, run_id, decoder, temperature) -> bytes:
        """The colorized image at the input's full size: the run's posteriors decoded, merged with
        the input's full-resolution lightness (as `colorize-fcn colorize` does)."""
        decoder, temperature = check_decoding(decoder, temperature)
        upload, run = self.get(image_id), self.run(run_id)
        ab = run.model.colorizer.decode(self.posteriors(upload, run), decoder, temperature)
        return png_bytes(merge_lightness(upload.L_full, ab))

    def clusters_png(self, image_id, run_id) -> bytes:
        """The predicted cluster map (argmax), each cluster painted with its colour, at the input's
        aspect ratio (longer side min(input's, CLUSTER_MAP_SIDE))."""
        upload, run = self.get(image_id), self.run(run_id)
        labels = self.posteriors(upload, run).argmax(0).numpy()              # (S, S)
        w, h = upload.rgb.size
        scale = min(1.0, CLUSTER_MAP_SIDE / max(w, h))
        rows = _nearest(labels.shape[0], max(1, round(h * scale)))
        cols = _nearest(labels.shape[1], max(1, round(w * scale)))
        return png_bytes(cluster_palette(run.model.colorizer.centres_ab.cpu().numpy())[labels[rows[:, None], cols]])


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Source indices of n_out samples of n_in, nearest neighbour (pixel centres aligned)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)


def check_decoding(decoder, temperature):
    """(decoder, float temperature) of a request, or ServeError 400 in one line."""
    if decoder not in DECODERS:
        raise ServeError(400, f"unknown decoder {decoder!r}; expected one of {list(DECODERS)}")
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ServeError(400, f"temperature must be a number, got {temperature!r}") from None
    if not 0 < t <= MAX_TEMPERATURE:
        raise ServeError(400, f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    return decoder, t
