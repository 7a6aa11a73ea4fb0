"""Stopping and resuming training: a stop signal saves the current step and the same command
resumes; a second signal stops at once; luigi ends with EXIT_STOPPED and one line; loader
workers die with their process; a finished run keeps one resume checkpoint; a checkpoint with
wrong-shaped tensors falls back to the previous one; bf16 autocast + channels_last on the CPU.

CPU only and small: 32x32 images, K=4, width 1/16 (tests/test_train.py's shards)."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import PHOTOS, _build_shards, _cfg, _inputs
from train.checkpoint import load_checkpoint, save_checkpoint
from train.fit import fit
from train.stop import EXIT_STOPPED, StopRequest, TrainingStopped, quiet_worker, stop_signals

REPO = Path(__file__).resolve().parents[1]
QUIET = lambda *a: None  # noqa: E731
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STOPPED = re.compile(r"stopped at iteration (\d+); checkpoint written; the same command resumes")


@pytest.fixture(scope="module")
def photos6(tmp_path_factory):
    return _build_shards(tmp_path_factory.mktemp("photos6"), PHOTOS, factor=2)


def _rows(run):
    with open(run / "log.csv", newline="") as f:
        return [(int(r["iteration"]), r["split"], r["loss"], r["mean_iu"]) for r in csv.DictReader(f)]


def _same_weights(a, b):
    a, b = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- in process
def test_a_stop_signal_saves_the_current_step_and_the_run_resumes_to_the_same_end(tmp_path, photos6):
    cfg = _cfg(max_iteration=12, interval_validate=5)
    full = fit(tmp_path / "full", _inputs(photos6, cfg), device="cpu", log=QUIET)
    run, lines = tmp_path / "stopped", []

    def sigterm_at_7(iteration, total, loss):
        if iteration == 7:
            os.kill(os.getpid(), signal.SIGTERM)            # as a cluster's preemption would
    with pytest.raises(TrainingStopped) as stopped:
        fit(run, _inputs(photos6, cfg), device="cpu", log=lines.append, on_step=sigterm_at_7)
    assert stopped.value.iteration == 7 and stopped.value.exit_code == EXIT_STOPPED == 75
    assert lines[-1] == str(stopped.value) == "stopped at iteration 7; checkpoint written; the same command resumes"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL          # handlers restored
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["iteration"] == 7 and ckpt["since_validation"]["steps"] == 2
    assert load_checkpoint(run / "checkpoint.prev.pt")["iteration"] == 5
    assert [r[0] for r in _rows(run)] == [5, 5]

    seen = []
    resumed = fit(run, _inputs(photos6, cfg), device="cpu", log=QUIET,
                  on_step=lambda it, total, loss: seen.append(it))
    assert seen == list(range(8, 13)) and resumed["resumed_from"] == 7 and resumed["iterations"] == 12
    assert _rows(run) == _rows(tmp_path / "full")            # train rows too: the sums were saved
    assert _same_weights(run / "checkpoint.pt", tmp_path / "full" / "checkpoint.pt")
    assert resumed["best_val_loss"] == full["best_val_loss"]
    # a finished run keeps best.pt and ONE resume checkpoint
    for folder in (run, tmp_path / "full"):
        assert (folder / "done.json").exists() and (folder / "best.pt").exists()
        assert (folder / "checkpoint.pt").exists() and not (folder / "checkpoint.prev.pt").exists()


def test_a_second_signal_stops_at_once(monkeypatch):
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    with stop_signals() as request:
        assert isinstance(request, StopRequest) and not request.requested
        request.handle(signal.SIGINT, None)
        assert request.signal == "SIGINT" and killed == []
        request.handle(signal.SIGTERM, None)                 # the default action, now
        assert killed == [(os.getpid(), signal.SIGTERM)]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_resume_checkpoint_with_wrong_shapes_falls_back_to_the_previous_one(tmp_path, photos6):
    cfg = _cfg(max_iteration=12, interval_validate=5)
    run = tmp_path / "run"
    fit(run, _inputs(photos6, cfg), device="cpu", log=QUIET, stop_after=10)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    name = next(k for k, v in ckpt["state_dict"].items() if v.dim() == 4)
    ckpt["state_dict"][name] = torch.zeros(3, 3)              # same file, a tensor of another shape
    save_checkpoint(run / "checkpoint.pt", ckpt)
    lines = []
    result = fit(run, _inputs(photos6, cfg), device="cpu", log=lines.append)
    assert result["resumed_from"] == 5 and result["complete"]
    said = [line for line in lines if "checkpoint.pt" in line and "checkpoint.prev.pt" in line]
    assert len(said) == 1 and str(run / "checkpoint.pt") in said[0] and name in said[0], lines
    assert "(3, 3)" in said[0] and "iteration 5" in said[0]


def test_bf16_autocast_and_channels_last_on_the_cpu_train_and_resume(tmp_path, photos6):
    cfg = _cfg(max_iteration=6, interval_validate=3, precision="bf16", channels_last="on")
    seen = []

    def conv_hook(module, args, output):
        # training and validation batches (2 images); the tiles' single images are drawn by the
        # inference path (Colorizer.posteriors), which keeps its own 'auto' precision
        if isinstance(module, torch.nn.Conv2d) and module.in_channels > 1 and args[0].shape[0] > 1:
            seen.append((output.dtype, args[0].is_contiguous(memory_format=torch.channels_last)))
    handle = torch.nn.modules.module.register_module_forward_hook(conv_hook)
    try:
        full = fit(tmp_path / "full", _inputs(photos6, cfg), device="cpu", log=QUIET)
        part = fit(tmp_path / "resumed", _inputs(photos6, cfg), device="cpu", log=QUIET, stop_after=3)
        resumed = fit(tmp_path / "resumed", _inputs(photos6, cfg), device="cpu", log=QUIET)
    finally:
        handle.remove()
    assert seen and set(seen) == {(torch.bfloat16, True)}    # every convolution: bf16, channels-last
    assert part["iterations"] == 3 and resumed["resumed_from"] == 3 and resumed["iterations"] == 6
    assert _rows(tmp_path / "resumed") == _rows(tmp_path / "full")
    assert _same_weights(tmp_path / "resumed" / "checkpoint.pt", tmp_path / "full" / "checkpoint.pt")
    assert full["best_val_loss"] == resumed["best_val_loss"]


# ----------------------------------------------------------------------------- processes
def _luigi(task, *args, work, dataset):
    return [sys.executable, "-m", "luigi", "--module", "tasks", task, "--config", "102",
            "--dataset", str(dataset), "--colorize-work-dir", str(work),
            "--colorize-loader-workers", "0", "--colorize-device", "cpu", *args]


def _sigterm_when(proc, ready, what, timeout=180):
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"training ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)


def test_sigterm_during_luigi_training_saves_that_iteration_and_the_same_command_resumes(work, photo_dataset):
    overrides = {"max_iteration": 400, "interval_validate": 10}
    cmd = _luigi("TrainFCN32s", "--overrides", json.dumps(overrides), work=work, dataset=photo_dataset)
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _sigterm_when(proc, lambda: list(work.glob("runs/fcn32s-*/checkpoint.pt")), "checkpoint.pt")
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    assert "Traceback" not in out + err
    lines = [line for line in (out + err).splitlines() if STOPPED.search(line)]
    assert len(lines) == 1, out + err
    stopped_at = int(STOPPED.search(lines[0]).group(1))
    run = next(work.glob("runs/fcn32s-*"))
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == stopped_at >= 10

    # the same command resumes from it (stopped again, so that the test stays short)
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _sigterm_when(proc, lambda: load_checkpoint(run / "checkpoint.pt")["iteration"] > stopped_at
                             if (run / "checkpoint.pt").exists() else False, "new checkpoint")
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    assert f"resuming {run} from iteration {stopped_at}" in out
    again = int(STOPPED.search(out + err).group(1))
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == again > stopped_at
    assert load_checkpoint(run / "checkpoint.prev.pt")["iteration"] == again - again % 10
    assert not (run / "done.json").exists()


# PrepareRun with the label stage slowed down: each label shard takes 0.5 s more, and the
# first one says it has started (luigi.run goes through tasks' patched _schedule_and_run, as
# `luigi` does).
_SLOW_STAGE_SCRIPT = """
import sys, time, luigi, tasks
from pathlib import Path
real = tasks.LabelShard.build_shard
def slow(self, *args):
    Path(sys.argv[1]).touch()
    time.sleep(0.5)
    return real(self, *args)
tasks.LabelShard.build_shard = slow
luigi.run(sys.argv[2:])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_any_other_stage_stops_in_one_line_keeping_what_finished(work, photo_dataset, sig):
    """The first signal is recorded; the shard being written is finished, and the stage stops
    before the next one (pipeline.signals.stop_point), where nothing is half done."""
    args = _luigi("PrepareRun", work=work, dataset=photo_dataset)[5:]        # after "-m luigi --module tasks"
    started = work.parent / "started"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STAGE_SCRIPT, str(started), *args], cwd=REPO,
                            env={**ENV, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    assert "Traceback" not in out + err and "Exception ignored" not in err, err[-3000:]
    assert [line for line in (out + err).splitlines() if "stopped" in line] == [
        "colorize-fcn: stopped: what finished is kept; the same command goes on from there"]
    kept = sorted(work.glob("labels/**/*.h5")) + sorted(work.glob("lab/**/*.h5"))
    assert len(list(work.glob("labels/**/*.h5"))) == 1, "the label shard being written was finished, no more"
    written = {p: p.stat().st_mtime_ns for p in kept}
    assert not list(work.rglob(".*.tmp-*"))                                    # nothing half written

    rerun = subprocess.run(_luigi("PrepareRun", work=work, dataset=photo_dataset), cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == written                  # kept, not rebuilt
    assert len(list(work.glob("runs/*/inputs.json"))) == 1


_LOADER_SCRIPT = """
import sys, time, torch
from train.data import make_loader
class Numbers(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, i): return torch.tensor(i)
loader = make_loader(Numbers(), 2, False, 2, 0)
batches = iter(loader)
next(batches), next(batches)            # one batch from each worker: both have run worker_init_fn
print(*[w.pid for w in loader._iterator._workers], flush=True)
time.sleep(60)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"    # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_loader_workers_end_with_their_process_and_ignore_ctrl_c():
    proc = subprocess.Popen([sys.executable, "-c", _LOADER_SCRIPT], cwd=REPO, env={**ENV, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        for pid in workers:
            os.kill(pid, signal.SIGINT)                        # Ctrl-C reaches them too: ignored
        time.sleep(0.3)
        assert all(_alive(p) for p in workers)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 2                                 # torch's own watchdog: 5 s
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in workers)


# ----------------------------------------------------------------------------- colorize
def test_colorize_interrupted_says_how_many_were_written_and_skip_existing_finishes(tmp_path, capsys,
                                                                                     monkeypatch):
    from PIL import Image
    from inference.api import ImageColorizer
    from inference.cli import main
    from test_colorize import fake_run
    run, src, out = fake_run(tmp_path), tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(5):
        Image.new("RGB", (24, 16), (40 * i, 90, 200 - 30 * i)).save(src / f"p{i}.png")
    real, calls = ImageColorizer.predict_ab, []

    def ctrl_c_at_the_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt            # where Ctrl-C lands: the main thread, in the network
        return real(self, *args, **kwargs)
    monkeypatch.setattr(ImageColorizer, "predict_ab", ctrl_c_at_the_third_batch)
    args = ["colorize", "--model", str(run), str(src), "--out", str(out), "--batch-size", "1", "--device", "cpu",
            "-q"]
    assert main(args) == EXIT_STOPPED
    err = capsys.readouterr().err.strip().splitlines()
    written = sorted(p.name for p in out.iterdir())
    assert written == ["p0.png", "p1.png"], err              # batches 1 and 2, complete files only
    assert err == ["colorize-fcn: interrupted: 2 of 5 written; rerun with --skip-existing"]
    monkeypatch.setattr(ImageColorizer, "predict_ab", real)
    assert main(args + ["--skip-existing"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"p{i}.png" for i in range(5)]


def test_colorize_interrupted_while_its_last_outputs_are_written_counts_them(tmp_path, capsys, monkeypatch):
    """Ctrl-C landing while the main thread waits for the last batch's writes: the writing
    threads finish those outputs, and the count says so (it said 0 of N with N written)."""
    from PIL import Image
    import inference.files
    from inference.cli import main
    from test_colorize import fake_run
    run, src, out = fake_run(tmp_path), tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(4):
        Image.new("RGB", (24, 16), (40 * i, 90, 200 - 30 * i)).save(src / f"p{i}.png")
    real, calls = inference.files.save_image, []

    def ctrl_c_then_slow_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)    # lands in the main thread, waiting for this write
        time.sleep(0.3)
        return real(*args, **kwargs)
    monkeypatch.setattr(inference.files, "save_image", ctrl_c_then_slow_save)
    args = ["colorize", "--model", str(run), str(src), "--out", str(out), "--batch-size", "4", "--threads", "1",
            "--device", "cpu", "-q"]
    assert main(args) == EXIT_STOPPED
    err = capsys.readouterr().err.strip().splitlines()
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"p{i}.png" for i in range(4)], err     # computed before the signal: all written
    assert err == ["colorize-fcn: interrupted: all 4 written; nothing left to do"]


def _quiet_sleeper(queue):
    quiet_worker()
    queue.put(os.getpid())
    time.sleep(60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_quiet_worker_ignores_others_sigterm_but_ends_on_its_parents():
    """A worker that ignored its parent's terminate() hung pytest at exit: multiprocessing's exit
    handler terminates daemonic children and then waits for them."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_quiet_sleeper, args=(queue,), daemon=True)
    proc.start()
    try:
        assert queue.get(timeout=30) == proc.pid
        subprocess.run(["kill", "-TERM", str(proc.pid)], check=True)      # another process's SIGTERM
        time.sleep(0.5)
        assert proc.is_alive()
        proc.terminate()                                                   # the parent's
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()


def test_rotating_the_resume_checkpoint_never_leaves_a_moment_without_one(tmp_path, monkeypatch):
    """checkpoint.pt became checkpoint.prev.pt by a rename, then the new file took the name: a
    reader (this suite's own SIGTERM test, in CI) or a kill between the two found none."""
    import pipeline.atomic
    import train.checkpoint
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, {"iteration": 1}, keep_previous=True)
    seen, real = [], os.replace

    def replace_and_look(src, dst):
        seen.append(ckpt.exists())
        real(src, dst)
        seen.append(ckpt.exists())
    monkeypatch.setattr(pipeline.atomic.os, "replace", replace_and_look)
    monkeypatch.setattr(train.checkpoint.os, "replace", replace_and_look)
    save_checkpoint(ckpt, {"iteration": 2}, keep_previous=True)
    assert seen and all(seen), seen
    assert load_checkpoint(ckpt)["iteration"] == 2
    assert load_checkpoint(train.checkpoint.previous_path(ckpt))["iteration"] == 1
