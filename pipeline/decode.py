"""Decoders: per-pixel cluster posteriors (K, h, w) -> a/b colour planes (2, h, w).

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

from .color import hue_chroma_to_ab

DECODERS = ("max", "mean", "annealed")
DEFAULT_DECODER = "annealed"
DEFAULT_TEMPERATURE = 0.38       # Zhang et al. 2016


def cluster_centres_ab(gmm: dict) -> np.ndarray:
    """(K, 2) float32 (a, b) of the mixture's component means (given in hue/chroma)."""
    return hue_chroma_to_ab(np.asarray(gmm["means"], dtype=np.float32))


def _annealed_weights(post, temperature: float):
    """softmax(log p / T) over the class axis (dim -3) -- p^(1/T) renormalised."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(torch.log(post) / float(temperature), dim=-3)


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
    centres = torch.as_tensor(np.asarray(centres_ab, dtype=np.float32), device=p.device)
    if centres.shape != (p.shape[-3], 2):
        raise ValueError(f"centres_ab must be ({p.shape[-3]}, 2), got {tuple(centres.shape)}")
    if method == "max":
        ab = centres[p.argmax(dim=-3)]                          # (..., h, w, 2)
        ab = ab.movedim(-1, -3)
    else:
        w = p if method == "mean" else _annealed_weights(p, temperature)
        w = w / w.sum(dim=-3, keepdim=True).clamp_min(1e-12)    # inputs need not sum to exactly 1
        ab = torch.einsum("...khw,kc->...chw", w, centres)
    return ab.cpu().numpy() if as_numpy else ab


def gray_ab(shape_hw, like=None):
    """The grayscale baseline: a = b = 0, (2, h, w) float32 (numpy, or a tensor like `like`)."""
    if isinstance(like, torch.Tensor):
        return torch.zeros((2, *shape_hw), dtype=torch.float32, device=like.device)
    return np.zeros((2, *shape_hw), np.float32)
