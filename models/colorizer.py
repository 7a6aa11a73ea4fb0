"""Colorizer: a trained network plus everything it needs to turn lightness into colour.

It owns its input normalisation (the mean lightness of the training images is
subtracted inside forward) and its output decoding (the cluster colours of the
hue/chroma mixture and the decoders of models.decoders).  Training, the tiles,
Evaluate, `colorize-fcn colorize` and the Python API all go through it, so a
checkpoint is self-contained:

    {"settings": colorizer.settings(),        plain values: arch, K, width, im_size,
                                               mean_L and the mixture as lists
     "state_dict": colorizer.state_dict(), ...} the network's tensors

loads with torch.load(weights_only=True) into Colorizer.from_checkpoint(ckpt).
"""
import numpy as np
import torch
import torch.nn as nn

from pipeline.gmm import GMM_KEYS, as_gmm

from .decoders import DEFAULT_DECODER, DEFAULT_TEMPERATURE, cluster_centres_ab, decode
from .device import autocast
from .registry import get_architecture


class Colorizer(nn.Module):
    """(N, 1, H, W) lightness L in [0, 100] -> (N, K, H, W) cluster scores.

    arch: a registered architecture (models.registry); n_classes: K; width: channel
    multiplier; im_size: the side the network was trained on (inputs of other sizes
    are resized to it by the inference code); mean_L: subtracted from every input;
    gmm: {weights, means, covariances} of the K hue/chroma clusters."""

    def __init__(self, arch: str, n_classes: int, width: float, im_size: int, mean_L: float, gmm: dict):
        super().__init__()
        self.arch, self.n_classes, self.width, self.im_size = arch, int(n_classes), float(width), int(im_size)
        self.net = get_architecture(arch).build(self.n_classes, self.width)
        self._gmm = as_gmm(gmm, f"{arch} colorizer")
        if len(self._gmm["weights"]) != self.n_classes:
            raise ValueError(f"the mixture has K={len(self._gmm['weights'])}, the network {self.n_classes}")
        # Not persistent: the checkpoint keeps them in settings(), as plain values; as
        # buffers they follow the module to its device.
        self.register_buffer("mean_L", torch.tensor(float(mean_L)), persistent=False)
        self.register_buffer("centres_ab", torch.from_numpy(cluster_centres_ab(self._gmm)), persistent=False)

    # -- what a checkpoint stores -------------------------------------------------------------
    def settings(self) -> dict:
        """Plain values (weights-only loadable) that rebuild this colorizer: Colorizer(**s)."""
        return {"arch": self.arch, "n_classes": self.n_classes, "width": self.width,
                "im_size": self.im_size, "mean_L": float(self.mean_L),
                "gmm": {k: self._gmm[k].tolist() for k in GMM_KEYS}}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, where: str = "checkpoint") -> "Colorizer":
        """The colorizer of a checkpoint dict (torch.load(weights_only=True) of best.pt)."""
        if not isinstance(ckpt, dict) or "settings" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(f"{where} is not a colorize-fcn checkpoint (no settings / state_dict)")
        try:
            colorizer = cls(**ckpt["settings"])
            colorizer.load_state_dict(ckpt["state_dict"])
        except (TypeError, KeyError, RuntimeError) as e:
            raise ValueError(f"{where}: {' '.join(str(e).split())[:300]}") from None
        return colorizer

    @property
    def gmm(self) -> dict:
        """The hue/chroma mixture as float64 numpy arrays (pipeline.gmm format)."""
        return {k: v.copy() for k, v in self._gmm.items()}

    # -- network -----------------------------------------------------------------------------
    def forward(self, L):
        return self.net(L - self.mean_L)

    @torch.inference_mode()
    def posteriors(self, L) -> torch.Tensor:
        """(N, H, W) or (N, 1, H, W) lightness (tensor or array, any device) -> (N, K, H, W)
        float32 softmax posteriors on this colorizer's device (bf16 network on CUDA)."""
        device = self.mean_L.device
        x = torch.as_tensor(np.asarray(L, np.float32) if not isinstance(L, torch.Tensor) else L)
        x = x.to(device, torch.float32)
        if x.dim() == 3:
            x = x[:, None]
        with autocast(device):
            scores = self(x)
        return torch.softmax(scores.float(), dim=1)

    def decode(self, post, decoder: str = DEFAULT_DECODER, temperature: float = DEFAULT_TEMPERATURE):
        """Posteriors (..., K, h, w) -> a/b (..., 2, h, w) with this colorizer's cluster colours."""
        return decode(post, self.centres_ab.to(post.device) if isinstance(post, torch.Tensor)
                      else self.centres_ab.cpu(), decoder, temperature)

    def predict_ab(self, L, decoder: str = DEFAULT_DECODER, temperature: float = DEFAULT_TEMPERATURE):
        """(N, H, W) lightness -> (N, 2, H, W) float32 a/b tensor on this colorizer's device."""
        return self.decode(self.posteriors(L), decoder, temperature)
