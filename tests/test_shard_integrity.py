"""A damaged shard says which file and what to do, in one line, also from a DataLoader worker;
the `paths` strings of a shard are checksummed like its arrays."""
from pathlib import Path

import luigi
import pytest

import tasks
from conftest import build
from pipeline.shards import REBUILD_ADVICE, ShardError
from test_faults import CFG, _build_failures, _flip_byte


@pytest.fixture
def loader_workers():
    """Training with one DataLoader worker process (the tests' default is none)."""
    cfg = luigi.configuration.get_config()
    cfg.set("colorize", "loader_workers", "1")
    yield
    cfg.set("colorize", "loader_workers", "0")


def test_a_flipped_byte_read_in_a_loader_worker_names_the_file_and_what_to_do(work, photo_dataset,
                                                                               one_torch_thread, loader_workers):
    train = tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset))
    build(train.requires()["inputs"])
    lab, _ = train.requires()["inputs"].requires()["train"].pairs()[0]
    _flip_byte(Path(lab), "L")
    failures = _build_failures(train)
    assert [t.task_family for t, _ in failures] == ["TrainFCN32s"]
    error = failures[0][1]
    message = str(error)
    assert isinstance(error, ShardError) and "\n" not in message, message
    assert message.startswith(f"corrupt shard {lab} (dataset L, row ") and message.endswith(REBUILD_ADVICE), message
    assert "Caught" not in message and "worker" not in message, message
    Path(lab).unlink()                                           # what the message says to do
    build(train)
    assert Path(lab).is_file() and Path(train.run_dir() / "done.json").is_file()


def test_a_flipped_byte_in_the_paths_strings_is_an_error_naming_the_file(tmp_path):
    import numpy as np
    from pipeline.shards import read_array, verify_shard, write_shard
    from train.data import ShardDataset
    names = ["chelsea.png", "café/coffee.jpg", "rocket.png"]
    lab, labels = tmp_path / "lab.h5", tmp_path / "labels.h5"
    write_shard(lab, {"L": np.zeros((3, 8, 8), np.int16), "paths": names}, {"kind": "lab"})
    write_shard(labels, {"posteriors": np.zeros((3, 2, 4, 4), np.float16), "paths": names}, {"kind": "labels"})
    assert list(read_array(lab, "paths")) == names
    data = ShardDataset([(lab, labels)], flip=False)
    raw = bytearray(lab.read_bytes())
    assert raw.count(b"chelsea.png") == 1
    raw[raw.find(b"chelsea.png")] ^= 1                          # 'c' -> 'b': bhelsea.png
    lab.write_bytes(raw)
    with pytest.raises(ShardError) as e:
        read_array(lab, "paths")
    assert str(e.value).startswith(f"corrupt shard {lab} (dataset paths): ") and str(e.value).endswith(REBUILD_ADVICE)
    with pytest.raises(ShardError, match="corrupt shard .*dataset paths, row 1"):
        data._read(0, "paths", 1)
    with pytest.raises(ShardError, match="dataset paths"):
        verify_shard(lab)


def test_shards_with_unchecked_variable_length_strings_still_read(tmp_path):
    """Shards written before the strings were checksummed: read as before (the pipeline
    rebuilds its own: LabShard version 5, LabelShard version 2)."""
    import h5py
    from pipeline.shards import read_array
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as f:
        f.create_dataset("paths", data=["chelsea.png", "café.jpg"], dtype=h5py.string_dtype("utf-8"))
    assert list(read_array(old, "paths")) == ["chelsea.png", "café.jpg"]
