"""Decoders: per-pixel cluster posteriors (K, h, w) -> a/b colour planes (2, h, w).

DECODERS implements the decoders named in models.registry.DECODERS, the list
that the colorize CLI's --decoder choices, the Evaluate methods and the
report's columns all come from.

The clusters live in (hue, chroma) feature space (pipeline.color); their centres
are converted to (a, b) once, and every decoder works in (a, b):

  'max'       the centre of the most probable cluster (argmax).
  'mean'      the posterior-weighted mean of the centres, taken in (a, b) -- so hues
              average on the colour circle (two reds either side of hue 0 == 1 give
              red, never the cyan a linear average of hue would give).
  'annealed'  Zhang et al.'s annealed mean: p^(1/T) renormalised, then 'mean';
              T -> 0 tends to 'max', T = 1 is 'mean'.  Computed in log space
              (softmax(log p / T)), so small T never underflows to 0/0.

The same decoders turn TARGET posteriors into the oracle colorization.  Inputs
may be numpy arrays or torch tensors, (K, h, w) or batched (N, K, h, w); the
output has the same type, device and leading shape with K replaced by 2.
"""
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.color import hue_chroma_to_ab

from .registry import DECODERS as DECODER_NAMES, DEFAULT_DECODER, DEFAULT_TEMPERATURE


def cluster_centres_ab(gmm: dict) -> np.ndarray:
    """(K, 2) float32 (a, b) of the mixture's component means (given in hue/chroma)."""
    return hue_chroma_to_ab(np.asarray(gmm["means"], dtype=np.float32))


def _annealed_weights(post, temperature: float):
    """softmax(log p / T) over the class axis (dim -3) -- p^(1/T) renormalised."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(torch.log(post) / float(temperature), dim=-3)


def _decode_max(p, centres, temperature):
    return centres[p.argmax(dim=-3)].movedim(-1, -3)            # (..., h, w, 2) -> (..., 2, h, w)


def _weighted_mean(w, centres):
    w = w / w.sum(dim=-3, keepdim=True).clamp_min(1e-12)        # inputs need not sum to exactly 1
    return torch.einsum("...khw,kc->...chw", w, centres)


def _decode_mean(p, centres, temperature):
    return _weighted_mean(p, centres)


def _decode_annealed(p, centres, temperature):
    return _weighted_mean(_annealed_weights(p, temperature), centres)


# name -> fn(posteriors (..., K, h, w) float tensor, centres (K, 2), temperature) -> (..., 2, h, w);
# the names are models.registry.DECODERS
DECODERS = {name: globals()[f"_decode_{name}"] for name in DECODER_NAMES}


def decode(post, centres_ab, method: str = DEFAULT_DECODER, temperature: float = DEFAULT_TEMPERATURE):
    """Posteriors (..., K, h, w) -> a/b (..., 2, h, w) with decoder `method` (see DECODERS).

    centres_ab: (K, 2) cluster centres in (a, b) (cluster_centres_ab(gmm)).
    """
    if method not in DECODERS:
        raise ValueError(f"unknown decoder {method!r}; expected one of {list(DECODERS)}")
    as_numpy = not isinstance(post, torch.Tensor)
    p = torch.as_tensor(np.asarray(post, dtype=np.float32) if as_numpy else post).float()
    if p.dim() < 3:
        raise ValueError(f"posteriors must be (..., K, h, w), got shape {tuple(p.shape)}")
    centres = torch.as_tensor(np.asarray(centres_ab, dtype=np.float32) if not isinstance(centres_ab, torch.Tensor)
                              else centres_ab, device=p.device).float()
    if centres.shape != (p.shape[-3], 2):
        raise ValueError(f"centres_ab must be ({p.shape[-3]}, 2), got {tuple(centres.shape)}")
    ab = DECODERS[method](p, centres, temperature)
    return ab.cpu().numpy() if as_numpy else ab


def upsample_posteriors(post, size):
    """(N, K, s, s) posteriors -> (N, K, H, W), bilinear, align_corners=False.

    Targets are stored at the low target resolution and brought to the network's
    output size with this (the loss, the tiles and Evaluate's oracle all do).
    Bilinear weights are non-negative and sum to 1, so each upsampled pixel is a
    convex combination of distributions over K: still a distribution.
    """
    if tuple(post.shape[-2:]) == tuple(size):
        return post
    return F.interpolate(post, size=tuple(size), mode="bilinear", align_corners=False)


def gray_ab(shape_hw, like=None):
    """The grayscale baseline: a = b = 0, (2, h, w) float32 (numpy, or a tensor like `like`)."""
    if isinstance(like, torch.Tensor):
        return torch.zeros((2, *shape_hw), dtype=torch.float32, device=like.device)
    return np.zeros((2, *shape_hw), np.float32)
