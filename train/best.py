"""Which validation is the best one, the one best.pt keeps: config key best_by.

'val_loss': the lowest validation loss (this project's default).  'mean_iou': the highest
validation mean IoU, as the original's runs chose (its last commit instead kept the model
whose validation loss went UP, a defect).  Either way a score must be finite and strictly
better than the best so far, so the first of equal scores wins.
"""
import math

# best_by -> (the validation row's column, +1 when higher is better / -1 when lower is)
CRITERIA = {"val_loss": ("loss", -1), "mean_iou": ("mean_iu", +1)}


def best_score(row: dict, best_by: str) -> float:
    """The value of validation `row` (train.steps.evaluate's dict) that best_by compares."""
    if best_by not in CRITERIA:
        raise ValueError(f"best_by must be one of {sorted(CRITERIA)}, got {best_by!r}")
    return row[CRITERIA[best_by][0]]


def is_better(score, best, best_by: str = "val_loss") -> bool:
    """True when `score` is a new best: finite and strictly better than `best` (None: no best
    yet) in best_by's direction (lower loss, higher mean IoU)."""
    sign = CRITERIA[best_by][1]
    return score is not None and math.isfinite(score) and (best is None or sign * score > sign * best)
