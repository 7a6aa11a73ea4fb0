"""The end of `make demo`: colorize a held-out photo and say where everything is."""
import json
from pathlib import Path

from .api import load_colorizer
from .files import colorize_items


def colorize_one(run_dir, photo, out_path, device="auto") -> Path:
    """Colorize `photo` with the run's best.pt into `out_path`; a one-line error if it fails."""
    result = colorize_items(load_colorizer(run_dir, device), [(Path(photo), Path(out_path))])
    if result["failed"]:
        raise RuntimeError(f"could not colorize {photo}: {result['failed'][0][1]}")
    return Path(out_path)


def demo_summary(runs, eval_dir, coloured) -> str:
    """The demo's closing lines: each run's best validation, the held-out evaluation, then the
    files to look at and the commands to go on with.  runs: run folders, the final one last."""
    lines = ["", "Demo finished."]
    for run in map(Path, runs):
        done = json.loads((run / "done.json").read_text())
        lines.append(f"  trained {run.name}: best val loss {done.get('best_val_loss', float('nan')):.4f} "
                     f"(iteration {done.get('best_iteration')})")
    methods = json.loads((Path(eval_dir) / "metrics.json").read_text())["methods"]
    final = Path(runs[-1])
    lines += [f"  held-out photos: AuC {methods['model/annealed']['auc']:.1f}% (gray baseline "
              f"{methods['gray']['auc']:.1f}%), mean IoU {methods['model/annealed']['mean_iou']:.3f}",
              "  A 9-photo CPU demo gives muted colours; config 14 on a real dataset and a GPU is what "
              "the method is for (README 'Experiment configs').",
              f"Look at it on a page:  .venv/bin/colorize-fcn serve --model {final}   (then open http://127.0.0.1:8000/)",
              f"Report:     {Path(eval_dir) / 'report.html'}",
              f"Colorized:  {coloured}",
              f"Colorize your photos:  .venv/bin/colorize-fcn colorize --model {final} YOUR_PHOTOS/ --out colorized/",
              f"Curves:     .venv/bin/tensorboard --logdir {final.parent}"]
    return "\n".join(lines)
