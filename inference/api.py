"""The Python API: colorize images already in memory.

    from inference import load_colorizer
    model = load_colorizer("work/runs/fcn16s-c14-<sig>")        # a run folder or a .pt file
    rgb = model.colorize(Image.open("old.jpg"))                  # PIL RGB, the input's size
    rgbs = model.colorize_batch([img1, img2], decoder="mean")

Inputs are PIL images of any mode or uint8 arrays ((H, W) gray, (H, W, 3) RGB,
(H, W, 4) RGBA), of any size; colour inputs are reduced to their lightness
first.  Outputs keep the input's full-resolution lightness.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from models.colorizer import Colorizer
from models.decoders import DEFAULT_DECODER, DEFAULT_TEMPERATURE
from models.device import resolve_device
from train.checkpoint import CORRUPT, CheckpointError, load_checkpoint
from train.runfolder import read_done

from .images import as_rgb_image, merge_lightness, prepare


class ModelError(Exception):
    """The model cannot be loaded; the message is one line and starts with the checkpoint file."""


def checkpoint_path(model_path) -> Path:
    """A run folder (-> its best.pt) or a checkpoint file."""
    p = Path(model_path)
    if p.is_dir():
        p = p / "best.pt"
    if not p.is_file():
        raise ModelError(f"{p}: no checkpoint file (give a run folder holding best.pt, or a .pt file)")
    return p


class ImageColorizer:
    """A loaded Colorizer on a device, with image-level helpers.

    colorizer: the models.colorizer.Colorizer (eval mode); device: where it runs;
    iteration / max_iteration: the iteration its weights come from (for best.pt, the best
    validation's, which need not be the last) and its run's length; run_complete: what the
    done.json beside the checkpoint says of its run (None: no done.json there)."""

    def __init__(self, colorizer: Colorizer, device, iteration=None, max_iteration=None, source="",
                 run_complete=None):
        self.colorizer = colorizer.to(device).eval()
        self.device = device
        self.iteration, self.max_iteration, self.source = iteration, max_iteration, str(source)
        self.run_complete = run_complete

    @property
    def im_size(self) -> int:
        return self.colorizer.im_size

    @property
    def finished(self) -> bool:
        """False when the checkpoint may come from a run that had not reached its last
        iteration: its done.json says so, or, with no done.json beside it, its weights are
        from before the last iteration (a finished run's best.pt copied elsewhere reads the
        same as an unfinished one's)."""
        if self.run_complete is not None:
            return self.run_complete
        return self.iteration is None or self.max_iteration is None or self.iteration >= self.max_iteration

    def unfinished_note(self):
        """None when finished, else one sentence saying why the run may not have finished."""
        if self.finished:
            return None
        where = f"iteration {self.iteration} of {self.max_iteration}"
        if self.run_complete is False:
            return f"{self.source} comes from an unfinished run (weights of {where})"
        return (f"{self.source} holds the weights of {where} and has no done.json beside it: "
                "its run may not have finished")

    def predict_ab(self, L_small, decoder=DEFAULT_DECODER, temperature=DEFAULT_TEMPERATURE):
        """(N, S, S) lightness at the network's size -> (N, 2, S, S) a/b on the CPU."""
        return self.colorizer.predict_ab(np.stack(L_small), decoder, temperature).cpu()

    def colorize_batch(self, images, decoder=DEFAULT_DECODER, temperature=DEFAULT_TEMPERATURE) -> list:
        """Colorize images in one network batch; returns PIL RGB images of the inputs' sizes."""
        loaded = [prepare(as_rgb_image(im), self.im_size) for im in images]
        if not loaded:
            return []
        ab = self.predict_ab([x.L_small for x in loaded], decoder, temperature)
        return [Image.fromarray(merge_lightness(x.L_full, ab[i])) for i, x in enumerate(loaded)]

    def colorize(self, image, decoder=DEFAULT_DECODER, temperature=DEFAULT_TEMPERATURE) -> Image.Image:
        """Colorize one image (PIL image or uint8 array); a PIL RGB image of its size."""
        return self.colorize_batch([image], decoder, temperature)[0]


def load_colorizer(path, device="auto", warn=None) -> ImageColorizer:
    """Load a run folder's best.pt (or any checkpoint file) weights-only; device 'auto' uses
    CUDA when present.  Raises ModelError with a one-line message naming the file once, or
    ValueError for a device name that is not one (models.device.check_device)."""
    dev = resolve_device(device, warn)
    ckpt_file = checkpoint_path(path)
    try:
        ckpt = load_checkpoint(ckpt_file)
    except CheckpointError as e:
        advice = " (delete it; copy it again or rerun the training that wrote it)" if e.reason == CORRUPT else ""
        raise ModelError(f"{ckpt_file}: {e.reason or e}{advice}") from None
    try:
        colorizer = Colorizer.from_checkpoint(ckpt, str(ckpt_file))     # its messages start with the file
    except (RuntimeError, ValueError) as e:
        raise ModelError(" ".join(str(e).split())[:400]) from None
    done = read_done(ckpt_file.parent)               # the run folder's, when the file is in one
    complete = done.get("complete") if isinstance(done, dict) else None
    return ImageColorizer(colorizer, dev, ckpt.get("iteration"), ckpt.get("max_iteration"), ckpt_file,
                          None if complete is None else bool(complete))
