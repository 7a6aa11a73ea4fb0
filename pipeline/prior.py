"""Class rebalancing (Zhang et al. 2016): the empirical cluster prior of a label
set and the loss weights derived from it.

The prior p is the frequency of each cluster as the ARGMAX of the target
posteriors, counted over every pixel of every image of the split's label shards
at the stored target resolution -- the same per-pixel label whose weight
train.loop.kl_loss applies.  (Upsampling the targets bilinearly, as the loss
does, changes these frequencies only at region borders.)

Weights: w_k proportional to 1 / ((1 - lambda) p_k + lambda / K), normalised so
that their expectation under p is 1 (sum_k p_k w_k = 1), so a rebalanced loss
keeps the scale of the plain one.  lambda = 1 gives uniform weights; lambda = 0.5
is Zhang et al.'s choice; lambda = 0 (pure inverse frequency) is refused because
a cluster that never occurs would get an infinite weight.
"""
import numpy as np

from .shards import read_array, read_attrs

_ROWS = 16   # images read at a time


def cluster_prior(label_paths, n_clusters: int) -> dict:
    """Argmax-cluster frequencies over every pixel of the given label shards.

    Returns {"prior": [K floats summing to 1], "counts": [K ints], "n_pixels", "n_images",
    "soft_prior": [K floats] (mean posterior, for reference)}."""
    counts = np.zeros(n_clusters, np.int64)
    soft = np.zeros(n_clusters, np.float64)
    n_images = 0
    for path in label_paths:
        n = int(read_attrs(path)["n_images"])
        for start in range(0, n, _ROWS):
            post = read_array(path, "posteriors", slice(start, min(n, start + _ROWS)))   # (B, K, s, s)
            if post.shape[1] != n_clusters:
                raise ValueError(f"{path} has K={post.shape[1]} clusters, expected {n_clusters}")
            post = post.astype(np.float32)
            counts += np.bincount(post.argmax(1).ravel(), minlength=n_clusters)
            soft += post.sum(axis=(0, 2, 3), dtype=np.float64)
            n_images += post.shape[0]
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no labelled pixels to estimate the cluster prior from (empty split)")
    return {"prior": (counts / total).tolist(), "counts": counts.tolist(), "n_pixels": total,
            "n_images": n_images, "soft_prior": (soft / soft.sum()).tolist()}


def rebalance_weights(prior, lam: float) -> np.ndarray:
    """(K,) float64 weights w ~ 1 / ((1 - lam) p + lam / K) with sum(p * w) = 1."""
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p < 0).any() or not np.isclose(p.sum(), 1.0, atol=1e-6):
        raise ValueError(f"prior must be a probability vector, got {prior!r}")
    lam = float(lam)
    if not 0 < lam <= 1:
        raise ValueError(f"rebalance lambda must be in (0, 1], got {lam}")
    w = 1.0 / ((1 - lam) * p + lam / len(p))
    return w / float((p * w).sum())
