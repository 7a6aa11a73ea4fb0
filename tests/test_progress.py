"""The one progress display: what it prints on a terminal and in a log."""
import csv
import io
import re

from pipeline import progress as progress_module
from pipeline.progress import Progress, format_seconds


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class TTY(io.StringIO):
    def isatty(self):
        return True


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 12.3, 59.6, 754, 7384)] == ["0s", "12s", "1m00s", "12m34s", "2h03m"]


def test_log_lines_every_tenth_with_rate_elapsed_and_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out = io.StringIO()
    bar = Progress(100, "train", stream=out, unit=" it/s")
    for _ in range(100):
        clock.t += 0.5                                     # 2 it/s
        bar.update(1, "loss 0.5000")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[4] == "train 50/100 (50%) 2.00 it/s elapsed 25s ETA 25s  loss 0.5000"
    assert lines[-1].startswith("train 100/100 (100%) 2.00 it/s elapsed 50s ETA 0s")


def test_log_lines_on_a_timer_when_tenths_are_slow(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out = io.StringIO()
    bar = Progress(100_000, "train", stream=out, start=50_000, interval_s=60)
    for _ in range(300):                                   # 300 steps of 1 s: 5 minutes, 0.3 %
        clock.t += 1
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5                                 # one a minute, none for tenths
    assert re.match(r"train 50060/100000 \(50%\) 1.00/s elapsed 1m00s ETA 13h52m$", lines[0]), lines[0]


def test_short_jobs_print_only_their_last_line_and_resume_counts_this_session(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out = io.StringIO()
    bar = Progress(None, "lab abc", stream=out)
    for i in range(4):
        clock.t += 1
        bar.update(1, total=4)
    assert out.getvalue() == "lab abc 4/4 (100%) 1.00/s elapsed 4s ETA 0s\n"


def test_terminal_redraws_in_place_and_notes_start_a_new_line(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out = TTY()
    bar = Progress(3, "train", stream=out)
    clock.t += 1
    bar.update(1)
    bar.note("valid iter 1: loss 0.5 (new best)")
    clock.t += 1
    bar.update(1)
    bar.close()
    assert out.getvalue() == ("\rtrain 1/3 (33%) 1.00/s elapsed 1s ETA 2s\n"
                              "valid iter 1: loss 0.5 (new best)\n"
                              "\rtrain 2/3 (67%) 1.00/s elapsed 2s ETA 1s\n")


def test_training_prints_one_line_per_validation_and_logs_hparams(tmp_path, capsys):
    """fit()'s console (stderr, not a terminal here): progress with a smoothed loss, then one
    'valid ...' line per validation; TensorBoard gets the config as hparams in one events file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_train import PHOTOS, _build_shards, _cfg, _inputs
    from train.fit import fit
    data = _build_shards(tmp_path, PHOTOS[:4], factor=8, empty_shard=False)
    fit(tmp_path / "run", _inputs(data, _cfg(max_iteration=4, interval_validate=2, batch_size=2)),
        device="cpu", log=lambda *a: None)
    lines = capsys.readouterr().err.splitlines()
    valid = [line for line in lines if line.startswith("fcn32s val ")]      # the run and the split named
    assert len(valid) == 2, lines
    assert re.match(r"fcn32s val on 'val' iteration 2/4: loss \d+\.\d{4}, mean IoU \d\.\d{3}, pixel acc \d\.\d{3}  "
                    r"\(new best\)$", valid[0]), valid[0]
    assert re.match(r"fcn32s val on 'val' iteration 4/4: .*\((new best|best \d+\.\d{4} at 2)\)$", valid[1]), valid[1]
    assert any(re.match(r"fcn32s train 4/4 \(100%\) .* loss \d+\.\d{4} \(mean of iterations \d+-4\)$", line) for line in lines), lines
    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["split"], r["data_split"]) for r in rows] == [("train", "train"), ("valid", "val")] * 2
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert "hparam/best_val_loss" in acc.Tags()["scalars"]
    assert "_hparams_/experiment" in acc.summary_metadata


def test_a_stage_prints_its_own_shards_done_of_the_split_with_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    out, on_disk = io.StringIO(), [800]
    stage = progress_module.StageProgress("LabShard train", lambda: on_disk[0], 5085, stream=out, interval_s=60)
    lines = []
    for _ in range(12):                  # another worker finishes a shard as often as this one
        clock.t += 10
        on_disk[0] += 2
        lines.append(stage.shard_done(256))
    lines.append(stage.shard_done(256, last=True))
    printed = [line for line in lines if line]
    assert printed == out.getvalue().splitlines() and len(printed) == 3     # every minute, and the end
    assert printed[0] == "LabShard train: 812/5085 shards, 25.6 img/s/worker, ETA 5h56m"   # 0.2 shards/s
    assert printed[-1].startswith("LabShard train: 824/5085 shards")


def test_building_shards_prints_one_line_per_stage_not_per_image(work, photo_dataset, capsys):
    import tasks
    from conftest import build
    build(tasks.PrepareRun(config=102, dataset=str(photo_dataset)))
    err = capsys.readouterr().err.splitlines()
    stages = [line for line in err if re.match(r"(LabShard|LabelShard) (train|val): \d+/\d+ shards, ", line)]
    assert any(line.startswith("LabShard train: ") for line in stages), err
    assert any(re.match(r"LabelShard train: (\d+)/\1 shards", line) for line in stages), stages
    assert not any(re.search(r"\d+/\d+ \(\d+%\)", line) for line in err), err   # no per-image bars


def test_a_validation_on_the_training_photos_says_so():
    from train.runlog import split_label
    assert split_label({"train_split": "train", "val_split": "small"}) == "val on 'small'"
    assert split_label({"train_split": "train", "val_split": "train"}) == "val on 'train' (the training photos)"


def test_the_demo_names_its_stage_of_five_with_elapsed_time_and_eta():
    from inference.demo import StageLines
    now = [0.0]
    out = io.StringIO()
    lines = StageLines(300, out, clock=lambda: now[0])
    shown = []
    for family, t in [("SampleDataset", 1), ("LabShard", 5), ("FitGMM", 20), ("TrainFCN32s", 60),
                      ("TrainFCN16s", 360), ("Evaluate", 700), ("Demo", 710)]:
        now[0] = t
        if family == "TrainFCN16s":
            lines.on_success("TrainFCN32s")                  # 300 iterations in 300 s: 1 s/it
        shown.append(lines.on_start(family))
    assert shown == [
        "demo: stage 1 of 5: write the sample photos; elapsed 1s, ETA: known once fcn32s has trained",
        "demo: stage 2 of 5: preprocess: Lab and label shards, GMM, class priors; elapsed 5s, "
        "ETA: known once fcn32s has trained",
        None,                                                  # the same stage: no new line
        "demo: stage 3 of 5: train fcn32s (300 iterations); elapsed 1m00s, ETA: this run's on its train "
        "line below; fcn16s then takes about as long",
        "demo: stage 4 of 5: train fcn16s from the best fcn32s (300 iterations); elapsed 6m00s, "
        "ETA ~5m00s (at fcn32s's pace)",
        "demo: stage 5 of 5: evaluate fcn16s on the held-out photos, colorize one; elapsed 11m40s, "
        "ETA under a minute",
        None]
    assert out.getvalue().splitlines() == [s for s in shown if s]
