"""One writer per run folder, fresh starts start fresh (issue 10, items 4 and 5).

Two processes on one run, wait=False, a filesystem without flock; truncated / missing /
unreadable checkpoints; a fresh start after deleting the checkpoints; best.pt deleted on a
complete run; a full disk in the middle of save_checkpoint.  CPU, 32x32 photos, config 102
with 10 iterations (validations and checkpoints at 5 and 10).
"""
import errno
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train.checkpoint
from pipeline.runlock import LockUnsupported, RunLock, RunLocked
from train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.fit import fit
from test_train import PHOTOS, QUIET, _build_shards, _cfg, _inputs, _log

REPO = Path(__file__).resolve().parents[1]
CFG = dict(max_iteration=10, interval_validate=5)


def _rows(run):
    return [(int(r["iteration"]), r["split"], r["loss"]) for r in _log(run)]


def _fit(run, data, **kw):
    return fit(run, _inputs(data, _cfg(**CFG)), device="cpu", log=kw.pop("log", QUIET), **kw)


def _one_line(message):
    return "\n" not in str(message)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _build_shards(tmp_path_factory.mktemp("photos6"), PHOTOS, factor=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """A complete, uninterrupted run: what every repaired run must end as."""
    run = tmp_path_factory.mktemp("reference") / "run"
    _fit(run, data)
    return run


@pytest.fixture
def copy(tmp_path, reference):
    """A private copy of the finished reference run."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


@pytest.fixture(scope="module")
def checkpoint5(tmp_path_factory, data):
    """The reference run's iteration-5 checkpoint (a session stopped there)."""
    run = tmp_path_factory.mktemp("at5") / "run"
    _fit(run, data, stop_after=5)
    return run / "checkpoint.pt"


@pytest.fixture
def unfinished(copy, checkpoint5):
    """The reference run as a kill just before done.json leaves it: checkpoint.pt at 10 and
    checkpoint.prev.pt at 5 (a finished run keeps only checkpoint.pt)."""
    assert not (copy / "checkpoint.prev.pt").exists()
    shutil.copy(checkpoint5, copy / "checkpoint.prev.pt")
    (copy / "done.json").unlink()
    return copy


def _same_weights(a, b):
    a, b = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _truncate(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


# ----------------------------------------------------------------------------- one writer
CHILD = """
import os, sys, time
from pipeline.run_inputs import RunInputs
from train.fit import fit
run, gate = sys.argv[1], sys.argv[2]

def hold_at_first_step(iteration, total, loss):   # keep the lock until the other one waits
    while iteration == 1 and not os.path.exists(gate):
        time.sleep(0.05)

r = fit(run, RunInputs.load(run), device="cpu", loader_workers=0, on_step=hold_at_first_step,
        log=lambda *a: print(*a, flush=True))
print("RESULT", os.getpid(), r["iterations"], r["complete"], flush=True)
"""


def test_two_processes_on_one_run_train_it_once_and_the_second_waits(tmp_path, data, reference):
    run, gate = tmp_path / "run", tmp_path / "gate"
    _inputs(data, _cfg(**CFG)).save(run)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    outs = [tmp_path / f"out{i}.txt" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(gate)], cwd=REPO, env=env,
                              stdout=open(out, "w"), stderr=subprocess.STDOUT) for out in outs]
    try:
        deadline = time.time() + 240
        while not any("waiting for" in out.read_text() for out in outs):   # one trains, one waits
            assert all(p.poll() is None for p in procs), [out.read_text()[-2000:] for out in outs]
            assert time.time() < deadline, "neither process reported waiting"
            time.sleep(0.1)
        gate.touch()
        for p in procs:
            assert p.wait(timeout=240) == 0, [out.read_text()[-2000:] for out in outs]
    finally:
        for p in procs:
            p.kill()
    texts = [out.read_text() for out in outs]
    waiter = next(i for i, t in enumerate(texts) if "waiting for" in t)
    trainer = 1 - waiter
    assert "waiting for" not in texts[trainer]
    line = next(line for line in texts[waiter].splitlines() if "waiting for" in line)
    assert f"waiting for {run} held by {socket.gethostname()}:{procs[trainer].pid} (since " in line
    assert "already complete" in texts[waiter] and f"RESULT {procs[waiter].pid} 10 True" in texts[waiter]
    assert f"RESULT {procs[trainer].pid} 10 True" in texts[trainer]
    # each row once (losses not compared: OMP_NUM_THREADS=1 here, not in the reference)
    assert [row[:2] for row in _rows(run)] == [row[:2] for row in _rows(reference)]
    assert sorted(p.name for p in (run / "tiles").iterdir()) == ["iter000005.jpg", "iter000010.jpg"]


def test_wait_false_is_a_one_line_error_naming_the_holder(tmp_path, data):
    run = tmp_path / "run"
    with RunLock(run):                        # held by this process, through another open file
        with pytest.raises(RunLocked) as e:
            _fit(run, data, wait=False)
    message = str(e.value)
    assert _one_line(message) and f"{socket.gethostname()}:{os.getpid()}" in message and str(run) in message
    assert sorted(p.name for p in run.iterdir()) == [".lock"]          # it wrote nothing
    assert (run / ".lock").read_text() == ""                          # released: no holder recorded


def _rank_on_a_locked_run(rank, world, port, run, inputs, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from train import ddp
    ddp.setup("cpu")
    try:
        fit(run, inputs, device="cpu", log=QUIET, distributed=True, wait=False)
        outcome = "trained"
    except Exception as e:  # noqa: BLE001 - what each rank saw is the test
        outcome = f"{type(e).__name__}: {e}"
    finally:
        ddp.teardown()
    (Path(out) / f"rank{rank}.txt").write_text(outcome)


def test_under_ddp_every_rank_fails_with_rank_0s_lock_error(tmp_path, data):
    """Rank 0 alone locks; the others follow its outcome (no rank left waiting in a collective)."""
    import torch.multiprocessing as mp
    from test_distributed import _free_port
    run = tmp_path / "run"
    with RunLock(run):
        mp.spawn(_rank_on_a_locked_run, args=(2, _free_port(), str(run), _inputs(data, _cfg(**CFG)),
                                              str(tmp_path)), nprocs=2, join=True)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("RunLocked: ") and f"{socket.gethostname()}:{os.getpid()}" in outcomes[0]
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_a_filesystem_without_flock_is_a_one_line_error_naming_the_lock_file(tmp_path, data, monkeypatch):
    import pipeline.runlock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(pipeline.runlock.fcntl, "flock", no_locks)
    with pytest.raises(LockUnsupported) as e:
        _fit(tmp_path / "run", data)
    assert _one_line(e.value) and str(tmp_path / "run" / ".lock") in str(e.value)
    assert "No locks available" in str(e.value)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_an_unusable_checkpoint_falls_back_to_the_previous_one(unfinished, data, reference, damage):
    """truncated: a crash or full disk under a non-atomic copy; missing: killed between the
    two renames of a checkpoint rotation.  Either way the run resumes from iteration 5."""
    copy = unfinished
    assert load_checkpoint(copy / "checkpoint.prev.pt")["iteration"] == 5
    _truncate(copy / "checkpoint.pt") if damage == "truncated" else (copy / "checkpoint.pt").unlink()
    lines = []
    result = _fit(copy, data, log=lines.append)
    said = [line for line in lines if "checkpoint.prev.pt (iteration 5)" in line]
    assert len(said) == 1 and ("unreadable" in said[0] or "cannot load" in said[0] if damage == "truncated"
                               else "is missing" in said[0])
    assert result["resumed_from"] == 5 and result["complete"] and result["iterations"] == 10
    assert _rows(copy) == _rows(reference)
    assert _same_weights(copy / "checkpoint.pt", reference / "checkpoint.pt")
    assert not (copy / "checkpoint.prev.pt").exists()          # finished: one resume checkpoint


def test_no_readable_checkpoint_is_a_one_line_error_saying_what_to_delete(unfinished, data):
    copy = unfinished
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        _truncate(copy / name)
    before = _rows(copy)
    with pytest.raises(CheckpointError) as e:
        _fit(copy, data)
    message = str(e.value)
    assert _one_line(message)
    assert f"delete {copy / 'checkpoint.pt'} and {copy / 'checkpoint.prev.pt'}" in message
    assert _rows(copy) == before and (copy / "best.pt").exists()       # nothing removed


def test_a_fresh_start_after_deleting_the_checkpoints_starts_with_empty_logs(copy, data, reference):
    assert not (copy / "checkpoint.prev.pt").exists()          # a finished run keeps one
    (copy / "checkpoint.pt").unlink()
    (copy / "tiles" / "iter000007.jpg").write_bytes(b"an older attempt's tile")
    (copy / "eval-old").mkdir()
    (copy / "eval-old" / "metrics.json").write_text("{}")
    lines = []
    result = _fit(copy, data, log=lines.append)
    assert result["resumed_from"] is None and result["complete"]
    assert any("starts from iteration 0: removed done.json, best.pt, log.csv" in line for line in lines)
    assert _rows(copy) == _rows(reference)                            # each row once
    assert sorted(p.name for p in (copy / "tiles").iterdir()) == ["iter000005.jpg", "iter000010.jpg"]
    assert len(list((copy / "tb").iterdir())) == 1 and not (copy / "eval-old").exists()
    assert _same_weights(copy / "best.pt", reference / "best.pt")


def test_a_complete_run_is_returned_without_training_or_writing(copy, data, reference):
    def stamps():                                    # every file but the lock's
        return {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
    before = stamps()
    steps = []
    result = _fit(copy, data, on_step=lambda *a: steps.append(a))
    assert steps == [] and result["complete"] and result["iterations"] == 10
    assert stamps() == before
    assert _rows(copy) == _rows(reference)


def _claim_best(run, iteration):
    """Rewrite checkpoint.pt as if its run's best validation had been `iteration`."""
    ckpt = load_checkpoint(run / "checkpoint.pt")
    ckpt["best_iteration"] = iteration
    save_checkpoint(run / "checkpoint.pt", ckpt)


def test_best_pt_deleted_on_a_complete_run_restarts_it_when_the_best_weights_are_lost(copy, data, reference):
    _claim_best(copy, 5)                          # the best was an earlier validation: lost with best.pt
    (copy / "best.pt").unlink()
    lines = []
    result = _fit(copy, data, log=lines.append)
    assert sum("the best weights are lost, restarting the run from iteration 0" in line for line in lines) == 1
    assert result["resumed_from"] is None and result["complete"]
    assert (copy / "done.json").exists() and (copy / "best.pt").exists()   # what Luigi's task needs
    assert _rows(copy) == _rows(reference)
    assert _same_weights(copy / "best.pt", reference / "best.pt")


def test_best_pt_deleted_is_rebuilt_from_the_checkpoint_when_that_was_the_best(copy, data):
    _claim_best(copy, 10)                         # the last validation was the best
    (copy / "best.pt").unlink()
    rows = _rows(copy)
    lines = []
    result = _fit(copy, data, log=lines.append)
    assert any("best.pt was missing; rebuilt from checkpoint.pt (iteration 10" in line for line in lines)
    assert result["complete"] and _rows(copy) == rows                    # nothing retrained
    best = load_checkpoint(copy / "best.pt")
    assert best["iteration"] == 10 and "optimizer" not in best
    assert _same_weights(copy / "best.pt", copy / "checkpoint.pt")


# ----------------------------------------------------------------------------- faults
def test_a_full_disk_during_save_checkpoint_leaves_the_previous_checkpoint_loadable(tmp_path, data, reference,
                                                                                     monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save

    def disk_full_at_iteration_10(payload, path):
        if "optimizer" in payload and payload["iteration"] == 10:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")                  # what got written before ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(payload, path)
    monkeypatch.setattr(train.checkpoint.torch, "save", disk_full_at_iteration_10)
    with pytest.raises(OSError) as e:
        _fit(run, data)
    assert e.value.errno == errno.ENOSPC and _one_line(e.value)
    assert f"cannot write {run / 'checkpoint.pt'}: No space left on device" in str(e.value)
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 5
    assert not (run / "done.json").exists() and not list(run.glob(".*.tmp-*"))
    monkeypatch.setattr(train.checkpoint.torch, "save", real_save)
    result = _fit(run, data)                                          # space again: the rerun finishes
    assert result["resumed_from"] == 5 and result["complete"]
    assert _rows(run) == _rows(reference)
    assert _same_weights(run / "checkpoint.pt", reference / "checkpoint.pt")
