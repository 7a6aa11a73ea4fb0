"""Shared fixtures: a temporary work dir wired into luigi.cfg's [colorize]
section, a small photo dataset, and a recorder of which tasks actually ran."""
import contextlib
import os
import sys
from pathlib import Path

import luigi
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tasks.py when run without install
sys.path.insert(0, str(Path(__file__).resolve().parent))        # tests/badfiles.py

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see pipeline/__init__.py; before torch loads

RAN = []     # tasks that ran (completed) in this test's builds


def _photos():
    from skimage import data
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def write_photo(path, seed: int, size=(64, 48)):
    """A small colour photo: a seeded random crop of a bundled skimage photo."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    img = photos[seed % len(photos)]
    h, w = img.shape[:2]
    ch, cw = h // 2, w // 2
    y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img[y:y + ch, x:x + cw]).resize(size, Image.BILINEAR).save(path)


@pytest.fixture
def work(tmp_path):
    """A fresh work dir; luigi's [colorize] settings point at it for this test."""
    with work_dir_settings(tmp_path / "work") as work_dir:
        yield work_dir


@contextlib.contextmanager
def work_dir_settings(work_dir):
    """luigi's [colorize] settings point at `work_dir` (CPU, no loader workers) inside."""
    cfg = luigi.configuration.get_config()
    values = {"work_dir": str(work_dir), "loader_workers": "0", "device": "cpu"}
    if not cfg.has_section("colorize"):
        cfg.add_section("colorize")
    saved = {k: cfg.get("colorize", k, None) for k in values}
    for k, v in values.items():
        cfg.set("colorize", k, v)
    try:
        yield work_dir
    finally:
        for k, v in saved.items():
            if v is None:
                cfg.remove_option("colorize", k)
            else:
                cfg.set("colorize", k, v)


@pytest.fixture
def photo_dataset(tmp_path):
    """12 train + 4 val small colour photos with split lists (and 'tiny' = 3 train photos)."""
    return make_photo_dataset(tmp_path / "photos")


def make_photo_dataset(root):
    """The photo_dataset fixture's files under `root` (for fixtures of a wider scope)."""
    train = [f"train/p{i:02d}.png" for i in range(12)]
    val = [f"val/v{i}.png" for i in range(4)]
    for i, rp in enumerate(train + val):
        write_photo(root / rp, seed=i)
    (root / "files_train.txt").write_text("\n".join(train) + "\n")
    (root / "files_val.txt").write_text("\n".join(val) + "\n")
    (root / "files_tiny.txt").write_text("\n".join(train[:3]) + "\n")
    return root


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: on a shared, busy CPU more threads spin against each other."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ran():
    """Families of the tasks that ran during the test, in order; `ran.clear()` between builds."""
    RAN.clear()

    class Ran(list):
        def tasks(self):
            return list(RAN)

        def families(self):
            return [t.task_family for t in RAN]

        def clear(self):
            RAN.clear()

        def count(self, family):
            return self.families().count(family)
    return Ran()


def build(*tasks, workers=1):
    """Run tasks in-process with the local scheduler; assert they all succeeded.

    Luigi caches task instances per process; a real run is a fresh process, so
    the cache is cleared first (task instances memoise their shard plans).
    """
    luigi.task_register.Register.clear_instance_cache()
    result = luigi.build(list(tasks), local_scheduler=True, workers=workers, detailed_summary=True,
                         log_level="WARNING")
    RAN.extend(luigi.execution_summary._summary_dict(result.worker)["completed"])   # works across worker processes
    assert result.status in (luigi.execution_summary.LuigiStatusCode.SUCCESS,
                             luigi.execution_summary.LuigiStatusCode.SUCCESS_WITH_RETRY), result.summary_text
    return result
