"""Segmentation scores of argmax cluster labels, as in the FCN reference.

A confusion matrix hist[true, pred] is accumulated (index_add_, on the device,
without a host sync) over a whole split; the four scores are computed from it at the end,
so they are exact over the split rather than averages of per-batch scores.

Scores follow label_accuracy_score of the FCN reference:
  acc       pixel accuracy: sum(diag) / sum(hist)
  acc_cls   mean over classes of diag / (pixels of that true class); classes with
            no true pixels are ignored (NaN, nanmean)
  mean_iu   mean over classes of diag / (true + predicted - diag); classes absent
            from both target and prediction are ignored (NaN, nanmean); a class
            only predicted (never true) counts with IoU 0
  fwavacc   IoU weighted by the true-class pixel frequency
"""
import numpy as np
import torch


def confusion_matrix(pred, target, n_classes: int) -> torch.Tensor:
    """(n, n) int64 counts hist[t, p] of pixels with true label t predicted as p.

    pred, target: integer label tensors of the same shape (any shape, same device).
    """
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.numel()} labels, target {target.numel()}")
    # index_add_ into a fixed-size tensor: torch.bincount on CUDA reads the largest index
    # back to size its output, a host sync per call (per training step)
    hist = torch.zeros(n_classes * n_classes, dtype=torch.int64, device=pred.device)
    return hist.index_add_(0, target * n_classes + pred, torch.ones_like(pred)).view(n_classes, n_classes)


def scores(hist) -> dict:
    """acc, acc_cls, mean_iu, fwavacc (Python floats) from a confusion matrix."""
    hist = np.asarray(hist.cpu() if isinstance(hist, torch.Tensor) else hist, dtype=np.float64)
    total = hist.sum()
    if total == 0:
        return {"acc": float("nan"), "acc_cls": float("nan"), "mean_iu": float("nan"),
                "fwavacc": float("nan")}
    diag = np.diag(hist)
    true = hist.sum(axis=1)
    predicted = hist.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc_cls = diag / true                          # NaN where the class is never true
        iu = diag / (true + predicted - diag)          # NaN where absent from both
    freq = true / total
    seen = freq > 0
    return {"acc": float(diag.sum() / total),
            "acc_cls": float(np.nanmean(acc_cls)),
            "mean_iu": float(np.nanmean(iu)),
            "fwavacc": float((freq[seen] * iu[seen]).sum())}


class ConfusionMeter:
    """Accumulates a confusion matrix on the scores' device; .scores() syncs once."""

    def __init__(self, n_classes: int, device="cpu"):
        self.n_classes = n_classes
        self.hist = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)

    def reset(self):
        self.hist.zero_()

    def update(self, scores_or_pred, target_labels):
        """scores (N, K, H, W) (argmax taken over K) or labels (N, H, W); target labels (N, H, W)."""
        pred = scores_or_pred.argmax(1) if scores_or_pred.dim() == target_labels.dim() + 1 else scores_or_pred
        self.hist += confusion_matrix(pred, target_labels, self.n_classes).to(self.hist.device)

    def scores(self) -> dict:
        return scores(self.hist)
