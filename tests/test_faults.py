"""Faults: a worker killed in the middle of training, a flipped byte in a finished
shard, a full disk and a read-only output folder.  (kill -9 in the middle of a shard:
tests/test_robustness.py.)"""
import csv
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import luigi
import pytest
from PIL import Image

import pipeline.shards
import tasks
from conftest import build
from pipeline.shards import ShardError, read_attrs, verify_shard

REPO = Path(__file__).resolve().parents[1]
CFG = 102
# One torch thread per process: on a shared, busy CPU torch's default threads spin against
# each other and a few dozen tiny steps take minutes instead of seconds.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _luigi(task, *args, work, dataset):
    return [sys.executable, "-m", "luigi", "--module", "tasks", task, "--config", str(CFG),
            "--dataset", str(dataset), "--colorize-work-dir", str(work),
            "--colorize-loader-workers", "0", "--colorize-device", "cpu", *args]


def _temporaries(folder):
    return [p for p in Path(folder).rglob(".*.tmp-*")]


def _assert_nothing_corrupt(work):
    """Every visible output is complete: shards pass their checksums, checkpoints load,
    JSON parses, images decode."""
    from train.checkpoint import load_checkpoint
    for path in Path(work).rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(work).parts):
            continue
        if path.suffix == ".h5":
            verify_shard(path)
            assert "n_images" in read_attrs(path)
        elif path.suffix == ".pt":
            assert "state_dict" in load_checkpoint(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".jpg", ".png"):
            with Image.open(path) as im:
                im.load()


# ----------------------------------------------------------------------------- kill -9
def test_kill_9_in_the_middle_of_training_then_rerun_resumes_from_the_last_checkpoint(work, photo_dataset):
    overrides = {"max_iteration": 30, "interval_validate": 5}
    cmd = _luigi("TrainFCN32s", "--overrides", json.dumps(overrides), work=work, dataset=photo_dataset)
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(work.glob("runs/fcn32s-*/checkpoint.pt")):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline, "no checkpoint.pt after 180 s"
            time.sleep(0.05)
        time.sleep(0.5)                                        # between two checkpoints
    finally:
        os.killpg(proc.pid, signal.SIGKILL)                    # the worker and any children
        proc.wait()
    run = next(work.glob("runs/fcn32s-*"))
    assert not (run / "done.json").exists(), "killed too late: the run had finished"
    _assert_nothing_corrupt(work)
    from train.checkpoint import load_checkpoint
    last = load_checkpoint(run / "checkpoint.pt")["iteration"]
    assert 5 <= last < 30 and last % 5 == 0

    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run / "done.json").read_text())
    assert result["resumed_from"] == last > 0 and result["complete"] and result["iterations"] == 30
    rows = list(csv.DictReader(open(run / "log.csv", newline="")))
    for split in ("train", "valid"):                           # each validation logged once
        assert [int(r["iteration"]) for r in rows if r["split"] == split] == list(range(5, 31, 5))
    _assert_nothing_corrupt(work)
    assert _temporaries(work) == []                            # killed writers' leftovers removed


# ----------------------------------------------------------------------------- flipped byte
def _flip_byte(path, dataset, row=0):
    """Flip one byte inside the stored (compressed, checksummed) chunk of `row`."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(row)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _build_failures(*roots):
    """Build in-process; return [(task, exception)] of the tasks that failed."""
    failures = []

    def record(task, exception):
        failures.append((task, exception))
    luigi.Task.event_handler(luigi.Event.FAILURE)(record)
    try:
        luigi.task_register.Register.clear_instance_cache()
        result = luigi.build(list(roots), local_scheduler=True, workers=1, log_level="CRITICAL",
                             detailed_summary=True)
    finally:
        luigi.Task._event_callbacks[luigi.Task][luigi.Event.FAILURE].discard(record)
    assert result.status == luigi.execution_summary.LuigiStatusCode.FAILED, result.summary_text
    return failures


@pytest.mark.parametrize("kind, array, reader, lowpass", [
    ("labels", "posteriors", "TrainFCN32s", 8),   # training reads every label shard of its splits
    ("lab", "L", "TrainFCN32s", 8),               # ... and every Lab shard
    ("lab", "ab_sums", "LabelShard", 8),          # a label shard being (re)built reads its Lab shard:
    ("lab", "ab", "LabelShard", 4),               # the a/b block sums (labels.SUM_BLOCK), or the a/b
])
def test_a_flipped_byte_in_a_finished_shard_is_an_error_naming_the_file(work, photo_dataset, one_torch_thread,
                                                                         kind, array, reader, lowpass):
    overrides = {"img_lowpass": lowpass}
    train = tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset), overrides=overrides)
    build(train.requires()["inputs"])                          # everything training reads, built
    split = train.requires()["inputs"].requires()["train"]
    lab, labels = split.pairs()[0]
    victim = Path(labels if kind == "labels" else lab)
    _flip_byte(victim, array)
    with pytest.raises(ShardError, match="corrupt shard"):
        verify_shard(victim)
    if reader == "LabelShard":
        Path(labels).unlink()
        root = tasks.PrepareRun(config=CFG, dataset=str(photo_dataset), overrides=overrides)
    else:
        root = train
    failures = _build_failures(root)
    assert [t.task_family for t, _ in failures] == [reader]
    message = str(failures[0][1])
    assert isinstance(failures[0][1], ShardError) and str(victim) in message and "\n" not in message
    assert f"dataset {array}" in message


# ----------------------------------------------------------------------------- full disk, read-only
def _lab_shard_task(photo_dataset):
    split = tasks.LabSplit(dataset=str(photo_dataset), im_size=32, split="train", shard_size=4)
    return split.requires()[0]


def _assert_one_line_naming(exception, path, *reasons):
    message = str(exception)
    assert isinstance(exception, OSError) and "\n" not in message, message
    assert f"cannot write {path}: " in message and any(r in message for r in reasons), message


def test_a_full_disk_is_a_one_line_error_naming_the_output_and_leaves_no_partial_file(
        work, photo_dataset, monkeypatch):
    """ENOSPC in the middle of writing a shard (simulated in-process)."""
    def full_disk_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "w" in mode:
            class Full:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    f.close()

                def write(self, data):
                    f.write(data[:len(data) // 2])             # half of it reached the disk
                    f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return Full()
        return f
    monkeypatch.setattr(pipeline.shards, "open", full_disk_open, raising=False)
    task = _lab_shard_task(photo_dataset)
    failures = _build_failures(task)
    assert [t.task_family for t, _ in failures] == ["LabShard"]
    _assert_one_line_naming(failures[0][1], task.output()[0].path, "No space left on device")
    assert failures[0][1].errno == errno.ENOSPC
    folder = Path(task.output()[0].path).parent
    assert list(folder.iterdir()) == []                        # no partial file, no temporary


def test_a_write_failing_in_hdf5_territory_ends_the_command_with_its_exit_code(work, photo_dataset):
    """A real failing write(2) (the file-size limit: EFBIG, as a full disk gives ENOSPC) through
    the `luigi` command: one-line error naming the shard, retcode task_failed (30), no partial
    output -- and no crash (HDF5 writing to disk segfaults at exit after a failed write)."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    cmd = _luigi("PrepareRun", "--overrides", '{"im_size": 64}', work=work, dataset=photo_dataset)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 30, (proc.returncode, proc.stderr[-3000:])
    prefix = "colorize-fcn: error: LabShard: "           # one line per failed task
    errors = [line[len(prefix):] for line in proc.stderr.splitlines() if line.startswith(prefix + "OSError: ")]
    assert errors and all("cannot write " in e and e.endswith(".h5: File too large") for e in errors), errors
    assert str(work / "lab") in errors[0]
    assert [p for p in work.rglob("*") if p.is_file() and p.parent != work / "logs"] == []  # nothing partial


@pytest.fixture
def read_only_folder():
    """Make a folder unwritable (chmod 555; as root, where permissions do not apply, the
    immutable attribute); undone afterwards."""
    made = []

    def make(folder):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            made.append(lambda: folder.chmod(0o755))
            return
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root and chattr +i is not available: cannot make a read-only folder")
        made.append(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
    yield make
    for undo in made:
        undo()


def test_a_read_only_output_folder_is_a_one_line_error_naming_the_output(work, photo_dataset, read_only_folder):
    task = _lab_shard_task(photo_dataset)
    folder = Path(task.output()[0].path).parent
    read_only_folder(folder)
    failures = _build_failures(task)
    assert [t.task_family for t, _ in failures] == ["LabShard"]
    _assert_one_line_naming(failures[0][1], task.output()[0].path, "Permission denied", "Operation not permitted",
                            "Read-only file system")
    assert list(folder.iterdir()) == []


def test_a_work_dir_that_cannot_be_created_is_a_one_line_error_naming_the_output(work, photo_dataset):
    blocker = work.parent / "not-a-folder"
    blocker.write_text("a file where a folder should be\n")
    luigi.configuration.get_config().set("colorize", "work_dir", str(blocker / "work"))  # the fixture restores it
    task = _lab_shard_task(photo_dataset)
    failures = _build_failures(task)
    _assert_one_line_naming(failures[0][1], task.output()[0].path, "Not a directory")
    assert blocker.read_text() == "a file where a folder should be\n"


# ----------------------------------------------------------------------------- full disk in any write
@pytest.fixture
def disk_full_writing(monkeypatch):
    """disk_full_writing(victim, module, name, let_through=0): the writer `module.name` (what a
    call site uses, e.g. tasks.write_text_atomic or train.fit.save_checkpoint) writes `victim`
    with the disk full half-way: no file can grow past half the data (half the text; half the
    size of the file it replaces).  That is RLIMIT_FSIZE, so the write fails in the kernel (EFBIG,
    as a full disk gives ENOSPC) whoever writes: Python, or torch's C++ zip writer.  Whatever the
    writer does inside (temporary + rename, or a direct write) meets the fault.
    The first `let_through` writes of `victim` succeed.  Returns the list of victim writes that
    reached the writer: the call site must use it.  victim None: the writer works again."""
    originals = {}
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def arm(victim, module, name, let_through=0):
        real = originals.setdefault((module, name), getattr(module, name))
        seen = []
        if victim is None:
            monkeypatch.setattr(module, name, real)
            return seen

        def writer(path, data, *args, **kwargs):
            if Path(path) != Path(victim):
                return real(path, data, *args, **kwargs)
            seen.append(Path(path))
            if len(seen) <= let_through:
                return real(path, data, *args, **kwargs)
            half = len(data.encode()) // 2 if isinstance(data, str) else Path(path).stat().st_size // 2
            resource.setrlimit(resource.RLIMIT_FSIZE, (half, hard))
            try:
                return real(path, data, *args, **kwargs)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        monkeypatch.setattr(module, name, writer)
        return seen
    yield arm
    signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_writing_a_manifest_leaves_no_partial_manifest(work, photo_dataset, disk_full_writing):
    """A half-written manifest would be taken for a finished one (its task complete, readers fed
    truncated JSON): each of the Lab manifest, the label manifest and the run inputs file fails
    with a one-line error naming it, and leaves nothing; the next build writes them whole."""
    import pipeline.run_inputs
    root = tasks.PrepareRun(config=CFG, dataset=str(photo_dataset))
    victims = [("LabSplit", root.requires()["train"].requires()["lab"], tasks),
               ("LabelSplit", root.requires()["train"], tasks),    # waits for the train LabSplit
               ("PrepareRun", root, pipeline.run_inputs)]
    for family, task, module in victims:
        path = Path(task.output().path)
        disk_full_writing(None, tasks, "write_text_atomic")                # the previous victim's
        seen = disk_full_writing(path, module, "write_text_atomic")
        failures = _build_failures(root)
        assert seen == [path], family
        assert [t.task_family for t, _ in failures] == [family]
        _assert_one_line_naming(failures[0][1], path, "File too large")
        assert not path.exists() and _temporaries(work) == [], family
    disk_full_writing(None, pipeline.run_inputs, "write_text_atomic")     # disarmed
    build(root)
    _assert_nothing_corrupt(work)                                         # every JSON whole
    assert json.loads(Path(root.output().path).read_text())["arch"] == "fcn32s"


def test_a_full_disk_saving_a_checkpoint_or_done_json_keeps_the_previous_checkpoint(
        work, photo_dataset, disk_full_writing, one_torch_thread):
    """Config 102 trains 20 iterations and saves checkpoint.pt at 10 and 20.  The disk fills
    while saving the second: the run fails, checkpoint.pt still loads (iteration 10).  Then it
    fills while writing done.json: the run fails without a done.json and the checkpoint is
    iteration 20's.  The next build finishes from there."""
    import train.fit
    from train.checkpoint import load_checkpoint
    train_task = tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset))
    run = train_task.run_dir()
    checkpoint, done = run / "checkpoint.pt", run / "done.json"

    seen = disk_full_writing(checkpoint, train.fit, "save_checkpoint", let_through=1)
    failures = _build_failures(train_task)
    assert [t.task_family for t, _ in failures] == ["TrainFCN32s"]
    _assert_one_line_naming(failures[0][1], checkpoint, "full disk")   # torch's own writer failed
    assert len(seen) == 2 and load_checkpoint(checkpoint)["iteration"] == 10
    assert not done.exists() and _temporaries(work) == []

    disk_full_writing(None, train.fit, "save_checkpoint")                # disarmed
    seen = disk_full_writing(done, train.fit, "write_text_atomic")
    failures = _build_failures(train_task)
    assert seen == [done] and [t.task_family for t, _ in failures] == ["TrainFCN32s"]
    _assert_one_line_naming(failures[0][1], done, "File too large")
    assert not done.exists() and load_checkpoint(checkpoint)["iteration"] == 20
    assert _temporaries(work) == []
    _assert_nothing_corrupt(work)

    disk_full_writing(None, train.fit, "write_text_atomic")
    build(train_task)
    result = json.loads(done.read_text())
    assert result["complete"] and result["iterations"] == 20 and result["resumed_from"] == 20
    _assert_nothing_corrupt(work)


# ----------------------------------------------------------------------------- killed mid-write
_KILLED_WRITER = """
import resource, signal, sys
kind, path = sys.argv[1], sys.argv[2]
if kind == "checkpoint":
    import torch
    from train.checkpoint import save_checkpoint
    write = lambda: save_checkpoint(path, {"state_dict": {"w": torch.arange(100_000.0)}, "iteration": 2})
else:
    from pipeline.atomic import write_text_atomic
    write = lambda: write_text_atomic(path, '{"iteration": 2, "pad": "%s"}' % ("x" * 100_000))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)          # past the limit: killed by the kernel
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
write()
"""


@pytest.mark.parametrize("kind", ["checkpoint", "text"])
def test_a_writer_killed_in_the_middle_leaves_the_previous_file(tmp_path, kind):
    """A process killed while it saves a checkpoint (train.checkpoint.save_checkpoint) or a JSON
    file (pipeline.atomic.write_text_atomic: done.json, manifests) leaves the previous file as
    it was, plus a temporary that the next run's cleanup removes."""
    from pipeline.atomic import remove_stale_temporaries, write_text_atomic
    from train.checkpoint import load_checkpoint, save_checkpoint
    import torch
    path = tmp_path / ("checkpoint.pt" if kind == "checkpoint" else "done.json")
    if kind == "checkpoint":
        save_checkpoint(path, {"state_dict": {"w": torch.zeros(3)}, "iteration": 1})
    else:
        write_text_atomic(path, '{"iteration": 1}')
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, kind, str(path)], cwd=REPO, timeout=120,
                          env={**ENV, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGXFSZ, (proc.returncode, proc.stderr[-2000:])
    previous = load_checkpoint(path) if kind == "checkpoint" else json.loads(path.read_text())
    assert previous["iteration"] == 1
    assert len(_temporaries(tmp_path)) == 1                                # the killed writer's
    assert remove_stale_temporaries(tmp_path) == 1 and list(tmp_path.iterdir()) == [path]
