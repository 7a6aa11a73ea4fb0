"""One optimiser step and one evaluation, and the state they share: what train.fit runs
between validations.

TrainState      everything fit and train_one_epoch share while training (a checkpoint restores it)
train_one_epoch the steps of the rest of an epoch; no host sync per step (loss and confusion
                counts stay on the device, read back every LOG_EVERY steps: nanoGPT's log_interval)
evaluate        eval-mode loss and confusion scores over a whole loader
validate        one validation: the train row since the last one and the validation split's row
"""
from dataclasses import dataclass, field

import torch

from models.device import autocast, use_channels_last

from . import ddp
from .loss import kl_loss
from .metrics import ConfusionMeter
from .stop import StopRequest

SCORE_KEYS = ("loss", "acc", "acc_cls", "mean_iu", "fwavacc")
LOG_EVERY = 10                # steps between read-backs of the training loss (nanoGPT's log_interval)


@dataclass
class TrainState:
    """Everything fit and train_one_epoch share while training (and a checkpoint restores)."""
    meter: ConfusionMeter                 # train confusion matrix since the last validation
    world_size: int = 1                   # ranks; batches are per-rank shares of the global batch
    class_weights: torch.Tensor = None    # (K,) rebalancing weights or None
    kl_reduction: str = "sum_k"           # the loss's reduction over K (train.loss.kl_loss)
    iteration: int = 0                    # optimiser steps done
    epoch: int = 0                        # pass over the training set in progress
    position: int = 0                     # images of that epoch consumed (all ranks together)
    images: int = 0                       # images trained on in this session
    stop: bool = False                    # set to end the session after the current step
    loss_sum: torch.Tensor = None         # summed step losses since the last validation (this rank's,
    steps: int = 0                        # float64 on the device) and the steps since then
    precision: str = "auto"               # config keys precision and channels_last (models.device)
    channels_last: str = "auto"
    log_every: int = LOG_EVERY            # steps between read-backs of the loss (read_back)
    window: tuple = (0.0, 0)              # (loss sum over ranks / ranks, steps) at the last read-back
    window_loss: float = None             # mean loss of the steps between the last two read-backs ...
    window_iterations: tuple = None       # ... (first, last) iteration of those steps
    signals: StopRequest = None           # this process's stop request (train.stop), None: not watched
    signalled: bool = False               # a signal (on any rank) ends this session
    saved_iteration: int = None           # iteration of the newest checkpoint.pt
    best_loss: float = None               # the best validation's loss (best_by decides which) ...
    best_iteration: int = None            # ... and where
    best_score: float = None              # the best validation's cfg best_by score (train.best)
    last_val: dict = None                 # the latest validation row
    elapsed_before: float = 0.0           # seconds spent in earlier sessions of this run
    loader_rng: torch.Tensor = field(default=None, repr=False)   # loader generator at epoch start

    def __post_init__(self):
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.meter.hist.device)

    def read_back(self) -> None:
        """The one host read of training, every log_every steps: window_loss, the mean loss since
        the last read-back (over all ranks); distributed, also whether any rank got a stop
        signal, so that all ranks stop together at this iteration."""
        if self.world_size > 1:
            flag = float(self.signals is not None and self.signals.requested)
            both = ddp.all_reduce_(torch.stack([self.loss_sum, self.loss_sum.new_tensor(flag)]))
            total, flags = both.tolist()
            total /= self.world_size
            if flags:
                self.signalled = self.stop = True
        else:
            total = self.loss_sum.item()
        before, steps_before = self.window
        if self.steps > steps_before:
            self.window_loss = (total - before) / (self.steps - steps_before)
            self.window_iterations = (self.iteration - (self.steps - steps_before) + 1, self.iteration)
        self.window = (total, self.steps)

    def stopping(self) -> bool:
        """state.stop, set by stop_after, a distributed read_back, or (one process) a signal."""
        if self.world_size == 1 and self.signals is not None and self.signals.requested:
            self.signalled = self.stop = True
        return self.stop


def make_optimizer(model, cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optim"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if cfg["optim"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    raise ValueError(f"optim must be 'adam' or 'sgd', got {cfg['optim']!r}")


def _to_device(x, target, device, channels_last="auto"):
    cuda = device.type == "cuda"
    x = x.to(device, non_blocking=cuda)
    if use_channels_last(channels_last, device):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, target.to(device, non_blocking=cuda)


# ----------------------------------------------------------------------------- steps
def train_one_epoch(model, loader, optimizer, device, state: TrainState, max_iteration: int,
                    on_step=None) -> int:
    """Train on the rest of the current epoch (loader.sampler already positioned), stopping
    early at max_iteration steps or when state.stopping().

    Per step: state.iteration += 1, state.position += the global batch, this rank's loss
    and confusion matrix are accumulated into state ON THE DEVICE (no host sync: the loss
    is read back every state.log_every steps and at max_iteration, state.read_back), then
    on_step(iteration, max_iteration, loss) is called, loss a 0-dim tensor on the device
    (this rank's; float(loss) reads it back) -- fit validates and checkpoints from there.
    When the epoch is exhausted, state.epoch += 1 and state.position = 0.
    Returns the number of steps taken."""
    steps = 0
    for x, target in loader:
        if state.iteration >= max_iteration or state.stopping():
            return steps
        model.train()                                     # on_step may have run an evaluation
        x, target = _to_device(x, target, device, state.channels_last)
        with autocast(device, state.precision):
            scores = model(x)
        loss, labels = kl_loss(scores, target, state.class_weights, return_labels=True,
                               reduction=state.kl_reduction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        state.iteration += 1
        state.position += x.shape[0] * state.world_size
        state.images += x.shape[0] * state.world_size
        loss = loss.detach()
        state.loss_sum += loss
        state.steps += 1
        state.meter.update(scores.detach(), labels)
        if state.iteration % state.log_every == 0 or state.iteration == max_iteration:
            state.read_back()
        if on_step is not None:
            on_step(state.iteration, max_iteration, loss)
        if state.iteration >= max_iteration or state.stopping():
            return steps
    state.epoch += 1
    state.position = 0
    return steps


@torch.inference_mode()
def evaluate(model, loader, device, n_classes, class_weights=None, all_reduce=False,
             reduction="sum_k", precision="auto", channels_last="auto") -> dict:
    """Eval-mode loss and scores over every image of `loader`:
    dict(loss, acc, acc_cls, mean_iu, fwavacc), loss = mean KL over all pixels.
    all_reduce: `loader` holds this rank's share of the split; the loss sums, image counts
    and confusion matrices of all ranks are summed (every rank gets the split's scores).
    Pass the bare model, not a DistributedDataParallel wrapper (ranks may hold unequal
    shares, so no collective may run per batch).  precision, channels_last: config keys."""
    was_training = model.training
    model.eval()
    meter = ConfusionMeter(n_classes, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(0)
    for x, target in loader:
        x, target = _to_device(x, target, device, channels_last)
        with autocast(device, precision):
            scores = model(x)
        loss, labels = kl_loss(scores, target, class_weights, return_labels=True, reduction=reduction)
        total += loss.double() * x.shape[0]
        n += x.shape[0]
        meter.update(scores, labels)
    model.train(was_training)
    if all_reduce:
        count = torch.tensor(float(n), dtype=torch.float64, device=device)
        for t in (total, count, meter.hist):
            ddp.all_reduce_(t)
        n = int(count.item())
    return {"loss": float(total / n) if n else float("nan"), **meter.scores()}


def validate(colorizer, val_loader, device, state: TrainState) -> dict:
    """One validation: {"train": the steps since the last validation, "valid": the whole
    validation split}, each a log row's scores.  Updates the best loss and resets the
    train accumulators."""
    if state.world_size > 1:
        ddp.all_reduce_(state.meter.hist)
        ddp.all_reduce_(state.loss_sum)
    train_row = {"loss": state.loss_sum.item() / max(state.steps * state.world_size, 1), **state.meter.scores()}
    val_row = evaluate(colorizer, val_loader, device, colorizer.n_classes, all_reduce=state.world_size > 1,
                       reduction=state.kl_reduction, precision=state.precision, channels_last=state.channels_last)
    state.loss_sum.zero_()
    state.steps, state.window = 0, (0.0, 0)
    state.meter.reset()
    state.last_val = dict(val_row)
    return {"train": train_row, "valid": val_row}
