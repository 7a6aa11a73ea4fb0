"""The demo (`make demo`, tasks.Demo): where it is while it runs, and at the end, colorize a
held-out photo and say where everything is.  Every figure says which photos it is on: config
101 validates on its training photos (a check that the network can learn its targets), the
evaluation is on the held-out 'val' photos."""
import json
import sys
import time
from pathlib import Path

import luigi

from pipeline.progress import format_seconds, write_console
from train.runlog import split_label

from .api import load_colorizer
from .files import colorize_items

# The demo's stages in order: (what it does, the task families that do it).  Every other task
# the demo runs is preprocessing (shards, GMM, mean lightness, priors, run inputs).
STAGES = (("write the sample photos", {"SampleDataset"}),
          ("preprocess: Lab and label shards, GMM, class priors", set()),
          ("train fcn32s", {"TrainFCN32s"}),
          ("train fcn16s from the best fcn32s", {"TrainFCN16s"}),
          ("evaluate fcn16s on the held-out photos, colorize one", {"Evaluate"}))
PREPROCESS = 2
_TRAINING = {"TrainFCN32s": 3, "TrainFCN16s": 4}


class StageLines:
    """`demo: stage 3 of 5: train fcn32s (300 iterations); elapsed 1m05s, ETA ...` when a
    stage's first task starts.  ETA: the training runs are nearly all of the demo's time; the
    second one's is the first one's measured seconds per iteration times its iterations."""

    def __init__(self, iterations: int, stream=None, clock=time.monotonic):
        self.iterations, self.stream, self.clock = iterations, stream, clock
        self.t0, self.stage, self.started, self.s_per_it = clock(), 0, {}, None

    def stage_of(self, family: str):
        if family == "Demo":
            return None
        return next((i for i, (_, families) in enumerate(STAGES, 1) if family in families), PREPROCESS)

    def on_start(self, family: str):
        stage = self.stage_of(family)
        if family in _TRAINING:
            self.started[family] = self.clock()
        if stage is None or stage <= self.stage:
            return None
        self.stage = stage
        line = f"demo: stage {stage} of {len(STAGES)}: {STAGES[stage - 1][0]}"
        if stage in _TRAINING.values():
            line += f" ({self.iterations} iterations)"
        line += f"; elapsed {format_seconds(self.clock() - self.t0)}, {self.eta(stage)}"
        write_console(self.stream or sys.stderr, line + "\n")
        return line

    def on_success(self, family: str):
        if family in _TRAINING and family in self.started:
            self.s_per_it = (self.clock() - self.started[family]) / max(self.iterations, 1)

    def eta(self, stage: int) -> str:
        left = [s for s in _TRAINING.values() if s >= stage]
        if not left:
            return "ETA under a minute"
        if self.s_per_it is None:
            return ("ETA: this run's on its train line below; fcn16s then takes about as long"
                    if stage == _TRAINING["TrainFCN32s"] else "ETA: known once fcn32s has trained")
        return f"ETA ~{format_seconds(self.s_per_it * self.iterations * len(left))} (at fcn32s's pace)"


_lines = []                 # the running demo's StageLines (one per process)


def announce_stages(iterations: int, stream=None) -> None:
    """Start printing the demo's stage lines (tasks.Demo.run, in the worker that runs the demo)."""
    if not _lines:
        _lines.append(StageLines(iterations, stream))


@luigi.Task.event_handler(luigi.Event.START)
def _stage_started(task):
    if _lines:
        _lines[0].on_start(task.get_task_family())


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _stage_done(task):
    if _lines:
        _lines[0].on_success(task.get_task_family())


def colorize_one(run_dir, photo, out_path, device="auto") -> Path:
    """Colorize `photo` with the run's best.pt into `out_path`; a one-line error if it fails."""
    result = colorize_items(load_colorizer(run_dir, device), [(Path(photo), Path(out_path))])
    if result["failed"]:
        raise RuntimeError(f"could not colorize {photo}: {result['failed'][0][1]}")
    return Path(out_path)


def demo_summary(runs, eval_dir, coloured, eval_split="val") -> str:
    """The demo's closing lines: each run's best validation (and on which photos), the
    held-out evaluation, then the files to look at and the commands to go on with.
    runs: run folders, the final one last."""
    lines = ["", "Demo finished."]
    for run in map(Path, runs):
        done = json.loads((run / "done.json").read_text())
        cfg = json.loads((run / "inputs.json").read_text()).get("cfg", {})
        loss = done.get("best_val_loss")
        lines.append(f"  trained {run.name}: best loss {loss:.4f} at iteration {done.get('best_iteration')}, "
                     f"{split_label(cfg)}" if isinstance(loss, float) else f"  trained {run.name}: no validation")
    metrics = json.loads((Path(eval_dir) / "metrics.json").read_text())
    methods, final = metrics["methods"], Path(runs[-1])
    lines += [f"  held-out photos (split '{eval_split}', {metrics['n_images']} images): AuC "
              f"{methods['model/annealed']['auc']:.1f}% (gray baseline {methods['gray']['auc']:.1f}%), "
              f"mean IoU {methods['model/annealed']['mean_iou']:.3f}",
              "  A 9-photo CPU demo gives muted colours; config 14 on a real dataset and a GPU is what "
              "the method is for (README 'Experiment configs').",
              f"Look at it on a page:  colorize-fcn serve --model {final}   (then open http://127.0.0.1:8000/)",
              f"Report:     {Path(eval_dir) / 'report.html'}",
              f"Colorized:  {coloured}",
              f"Colorize your photos:  colorize-fcn colorize --model {final} YOUR_PHOTOS/ --out colorized/",
              f"Curves:     tensorboard --logdir {final.parent}"]
    return "\n".join(lines)
