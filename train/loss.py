"""The training objective: KL divergence from the target posteriors to the network's."""
import torch
import torch.nn.functional as F

from models.decoders import upsample_posteriors


REDUCTIONS = ("sum_k", "mean_k")


def kl_loss(scores, target, class_weights=None, return_labels=False, reduction="sum_k"):
    """KL(target || softmax(scores)) summed over K, averaged over pixels and images.

    reduction "mean_k" divides that by K: the original's F.kl_div(size_average=True), a
    mean over every element (batch, K, H, W), whose gradient is K times smaller next to
    the same weight decay (config key kl_reduction; 7/14/15 use it).

    scores (N, K, H, W) (any float dtype; computed in float32); target (N, K, s, s)
    posteriors at the target resolution, upsampled to (H, W) bilinearly (an
    approximation of the original, which computed posteriors of the low-passed image
    at full resolution).  class_weights: optional (K,) tensor; a pixel's KL is multiplied
    by the weight of its target's argmax cluster (class rebalancing), then averaged over
    all pixels (weights are normalised so that their prior expectation is 1).
    With return_labels, also returns the (N, H, W) argmax target labels.
    """
    target = upsample_posteriors(target.float(), scores.shape[-2:])
    log_p = F.log_softmax(scores.float(), dim=1)
    kl = (torch.xlogy(target, target) - target * log_p).sum(1)       # (N, H, W); 0 log 0 = 0
    labels = target.argmax(1) if (return_labels or class_weights is not None) else None
    if class_weights is not None:
        kl = kl * class_weights.to(kl.device, kl.dtype)[labels]
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    loss = kl.mean() if reduction == "sum_k" else kl.mean() / scores.shape[1]
    return (loss, labels) if return_labels else loss
