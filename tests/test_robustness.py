"""Bad input and crashes through the whole preprocessing pipeline."""
import json
import os
import signal
import subprocess
import sys
import time
from itertools import zip_longest
from pathlib import Path

import h5py

import tasks
from badfiles import write_odd_files
from conftest import build, write_photo
from pipeline.shards import read_attrs, verify_shard
from test_shard_rows import assert_rows_match_paths

REPO = Path(__file__).resolve().parents[1]


def test_mixed_bad_files_every_usable_image_kept_every_other_counted(work, tmp_path, ran):
    root = tmp_path / "mixed"
    expected = write_odd_files(root / "odd")
    good = [f"good/p{i}.png" for i in range(6)]
    for i, rp in enumerate(good):
        write_photo(root / rp, seed=i)
    # skipped files before, between and after usable ones (badfiles lists the usable ones first)
    odd = ["odd/listed_but_missing.jpg"] + [f"odd/{name}" for name in reversed(expected)]
    train = [rp for pair in zip_longest(odd, good) for rp in pair if rp]
    (root / "files_train.txt").write_text("\n".join(train) + "\n")
    (root / "files_val.txt").write_text("\n".join(good[:2]) + "\n")
    build(tasks.PrepareRun(config=102, dataset=str(root)))

    split = tasks.LabSplit(dataset=str(root), im_size=32, split="train", shard_size=4)
    manifest = json.loads(Path(split.output().path).read_text())
    kept = set()
    for path in split.shard_paths():                        # row i of a shard is the image paths[i] names
        kept |= set(assert_rows_match_paths(root, path, 32))
    usable = {f"odd/{n}" for n, reason in expected.items() if reason is None} | set(good)
    assert kept == usable                                   # every usable colour image is in the shards
    skipped = {path: reason for path, reason, _ in manifest["skipped"]}
    want = {f"odd/{n}": reason for n, reason in expected.items() if reason is not None}
    want["odd/listed_but_missing.jpg"] = "missing"
    assert skipped == want                                  # every other file counted with its reason
    assert manifest["n_images"] + manifest["n_skipped"] == len(train)
    assert sum(manifest["skip_reasons"].values()) == len(want)


def _all_h5_complete(work):
    """Every visible .h5 file is a finished, checksummed shard."""
    for path in Path(work).rglob("*.h5"):
        assert not path.name.startswith("."), path
        verify_shard(path)
        assert "n_images" in read_attrs(path)


def test_kill_9_mid_run_leaves_no_complete_looking_file_and_rerun_finishes(work, tmp_path):
    root = tmp_path / "photos"
    files = [f"p{i:03d}.png" for i in range(40)]
    for i, rp in enumerate(files):
        write_photo(root / rp, seed=i, size=(320, 240))
    (root / "files_train.txt").write_text("\n".join(files[4:]) + "\n")
    (root / "files_val.txt").write_text("\n".join(files[:4]) + "\n")
    cmd = [sys.executable, "-m", "luigi", "--module", "tasks", "PrepareRun", "--config", "102",
           "--overrides", '{"im_size": 128, "shard_size": 8}', "--dataset", str(root),
           "--colorize-work-dir", str(work)]
    for delay in (2.5, 4.0):                                 # kill at two different moments
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _all_h5_complete(work)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _all_h5_complete(work)
    assert not [p for p in Path(work).rglob(".*.tmp-*")]   # stale temporaries cleaned up
    n = 0
    for p in Path(work).rglob("*.h5"):
        with h5py.File(p) as f:
            if "L" in f:
                n += len(f["L"])
    assert n == 40
