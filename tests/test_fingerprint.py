"""Source file fingerprints (pipeline/fingerprint.py) as the shard plan sees them:
what each mode detects, what it ignores, and its digest cache."""
import json
import multiprocessing
import os
import shutil
import time

import pytest

from pipeline import fingerprint as fpmod
from pipeline.plan import dataset_id, plan_shards

FILES = [f"img/{i:02d}.jpg" for i in range(6)]


def sigs(root, mode="stat", cache_dir=None):
    return [p.sig for p in plan_shards(root, FILES, shard_size=2, im_size=32, fingerprint=mode,
                                       cache_dir=cache_dir)]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    for i, rp in enumerate(FILES):
        (root / rp).write_bytes(bytes([i]) * 100 + os.urandom(100))
    return root


@pytest.fixture
def no_racy_window(monkeypatch):
    """Files made by the test are younger than RACY_NS; let their digests be cached."""
    monkeypatch.setattr(fpmod, "RACY_NS", 0)


def count_digests(monkeypatch):
    calls = []
    real = fpmod.content_digest
    monkeypatch.setattr(fpmod, "content_digest", lambda p: calls.append(p) or real(p))
    return calls


def next_tick():
    time.sleep(0.05)     # file timestamps advance in coarse ticks (a jiffy)


def test_stat_detects_same_size_rewrite_with_mtime_restored(dataset):
    before = sigs(dataset)
    path = dataset / FILES[3]
    st = os.stat(path)
    next_tick()
    with open(path, "r+b") as f:          # same length, other bytes, same inode
        f.write(b"\xff" * 50)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after_st = os.stat(path)
    assert (after_st.st_size, after_st.st_mtime_ns, after_st.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    after = sigs(dataset)
    assert sum(a != b for a, b in zip(before, after)) == 1


def test_stat_detects_replacement_by_rename_with_mtime_restored(dataset):
    """cp other.jpg tmp; touch -r old tmp; mv tmp old  (same size)."""
    before = sigs(dataset)
    path = dataset / FILES[0]
    st = os.stat(path)
    tmp = dataset / "tmp.jpg"
    tmp.write_bytes(os.urandom(st.st_size))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    assert sigs(dataset) != before


def test_content_ignores_touch_and_copy_but_not_a_byte(dataset, tmp_path):
    before = sigs(dataset, "content")
    next_tick()
    for rp in FILES:
        os.utime(dataset / rp)             # touch: new mtime and ctime, same bytes
    assert sigs(dataset, "content") == before
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(dataset, copy)         # new inodes, new ctimes
    assert sigs(copy, "content") == before
    assert sigs(copy, "stat") != sigs(dataset, "stat")
    with open(copy / FILES[4], "r+b") as f:
        f.seek(150)
        f.write(b"\x00")
    changed = sigs(copy, "content")
    assert sum(a != b for a, b in zip(before, changed)) == 1


def test_moving_the_dataset_keeps_its_id_and_signatures(dataset, tmp_path):
    before = {m: sigs(dataset, m) for m in fpmod.MODES}
    moved = tmp_path / "moved" / "data"
    moved.parent.mkdir()
    dataset.rename(moved)                  # same disk: the files keep inode and ctime
    assert dataset_id(moved) == "data"
    assert {m: sigs(moved, m) for m in fpmod.MODES} == before


def test_warm_cache_reads_no_file(dataset, tmp_path, monkeypatch, no_racy_window):
    cache = tmp_path / "cache"
    calls = count_digests(monkeypatch)
    cold = sigs(dataset, "content", cache)
    assert len(calls) == len(FILES)
    calls.clear()
    assert sigs(dataset, "content", cache) == cold
    assert calls == []
    next_tick()
    os.utime(dataset / FILES[1])           # a changed stat is a miss: only that file is reread
    assert sigs(dataset, "content", cache) == cold
    assert [os.path.basename(p) for p in calls] == ["01.jpg"]
    assert len(fpmod.load_cache(fpmod.cache_path(cache, dataset))) == len(FILES)   # old entry replaced


def test_recently_changed_files_are_not_cached(dataset, tmp_path, monkeypatch):
    """Within RACY_NS of a change a same-tick rewrite could keep the stat: do not trust it."""
    cache = tmp_path / "cache"
    calls = count_digests(monkeypatch)
    sigs(dataset, "content", cache)
    sigs(dataset, "content", cache)
    assert len(calls) == 2 * len(FILES)


def test_corrupt_or_foreign_cache_is_recomputed(dataset, tmp_path, monkeypatch, no_racy_window):
    cache = tmp_path / "cache"
    expected = sigs(dataset, "content")
    cache_file = fpmod.cache_path(cache, dataset)
    cache_file.parent.mkdir()
    calls = count_digests(monkeypatch)
    damaged = json.dumps({"entries": {f"{rp}\t{fpmod.file_fingerprint(dataset / rp)}": [1] for rp in FILES}})
    for junk in ['{"entries": {"img/00.jpg": [1', "[]", '{"entries": []}', damaged, "\x00\xff"]:
        cache_file.write_text(junk)
        calls.clear()
        assert sigs(dataset, "content", cache) == expected
        assert len(calls) == len(FILES)
        assert len(fpmod.load_cache(cache_file)) == len(FILES)     # rewritten whole


def test_missing_and_unreadable_files(dataset):
    assert fpmod.file_fingerprint(dataset / "nope.jpg", "content") == "missing"
    assert fpmod.file_fingerprint(dataset / "nope.jpg", "stat") == "missing"
    assert fpmod.file_fingerprint(dataset / "img", "content").startswith("unreadable-")
    before = sigs(dataset, "content")
    (dataset / FILES[5]).unlink()
    assert sigs(dataset, "content")[-1] != before[-1]


def test_unknown_mode_is_a_one_line_value_error(dataset):
    with pytest.raises(ValueError, match=r"^unknown fingerprint mode 'sha': expected one of stat, content$"):
        plan_shards(dataset, FILES, 2, 32, fingerprint="sha")


def _hammer(root, cache_dir, files, rounds):
    """Rewrite the cache `rounds` times; every read in between must see a whole file."""
    fpmod.RACY_NS = 0
    path = fpmod.cache_path(cache_dir, root)
    for _ in range(rounds):
        if path.exists():
            json.loads(path.read_text())
        fpmod.save_cache(path, {})
        fpmod.fingerprint_files(root, files, "content", cache_dir)


def test_concurrent_writers_leave_a_valid_cache(dataset, tmp_path, no_racy_window):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(dataset, cache, FILES[i::2], 200)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache_file = fpmod.cache_path(cache, dataset)
    data = json.loads(cache_file.read_text())
    assert data["entries"] and {k.split("\t")[0] for k in data["entries"]} <= set(FILES)
    assert [f.name for f in cache.iterdir()] == [cache_file.name]       # no temporaries left
    assert sigs(dataset, "content", cache) == sigs(dataset, "content")


def test_lab_shard_records_fingerprints_of_the_plan_mode(tmp_path):
    from conftest import write_photo
    from pipeline.preprocess import build_lab_shard
    from pipeline.shards import read_array
    rels = ["a.png", "b.png"]
    for i, rp in enumerate(rels):
        write_photo(tmp_path / rp, seed=i)
    for mode in fpmod.MODES:
        out = tmp_path / f"{mode}.h5"
        build_lab_shard(tmp_path, rels, 16, out, fingerprint=mode)
        stored = [x.decode() if isinstance(x, bytes) else x for x in read_array(out, "fingerprints")]
        assert stored == fpmod.fingerprint_files(tmp_path, rels, mode)
    assert stored[0].startswith("b2-")
    with pytest.raises(ValueError, match="unknown fingerprint mode"):
        build_lab_shard(tmp_path, rels, 16, tmp_path / "x.h5", fingerprint="mtime")
