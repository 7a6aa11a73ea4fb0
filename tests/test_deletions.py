"""Deleting any artifact at any depth reruns what rebuilds it (issue 10; README "Stale-only reruns").

Stage.complete() is deep: a task is complete while its outputs exist and everything it
requires is complete, recursively.  So after deleting one artifact a build reruns its task
and every task that requires that one, directly or not -- and nothing else.  Outputs are
named by signature, so the rebuilt artifact is byte-identical.

The tasks above it do not redo their work: the rebuilt input is the same, so their outputs
still hold, and Stage.run skips a task whose own outputs exist (test_..._rewrites_only_it).

The preprocessing tests start from copies of one finished PrepareRun (config 102, with class
rebalancing so that the class prior is in the graph) built once for the module.
"""
import shutil
from collections import Counter
from pathlib import Path

import luigi
import pytest

import tasks
from conftest import build, make_photo_dataset, work_dir_settings

CFG = 102
OVERRIDES = {"rebalance": 0.5}


def prepare(dataset):
    return tasks.PrepareRun(config=CFG, overrides=OVERRIDES, dataset=str(dataset))


def victim_task(kind, root):
    """The task whose output is the artifact `kind` of the PrepareRun `root`."""
    reqs = root.requires()
    train_lab = reqs["train"].requires()["lab"]
    return {
        "train Lab shard": lambda: train_lab.requires()[1],
        "val Lab shard": lambda: reqs["val"].requires()["lab"].requires()[0],
        "label shard": lambda: reqs["train"].requires()["labels"][1],
        "GMM": lambda: reqs["gmm"],
        "mean-L file": lambda: reqs["mean"],
        "Lab manifest": lambda: train_lab,
        "label manifest": lambda: reqs["val"],
        "class prior": lambda: reqs["prior"],
        "run inputs": lambda: root,
    }[kind]()


# The families that rerun: the victim's and those of every task above it.  The train split
# feeds the mean lightness, and every label shard reads the GMM.  A written GMM is complete
# while its file exists (it is signed by the images it samples: early cutoff), so nothing
# below it makes it rerun.
RERUN = {
    "train Lab shard": {"LabShard", "LabSplit", "MeanLightness", "LabelShard", "LabelSplit",
                        "ClassPrior", "PrepareRun"},
    "val Lab shard": {"LabShard", "LabSplit", "LabelShard", "LabelSplit", "PrepareRun"},
    "label shard": {"LabelShard", "LabelSplit", "ClassPrior", "PrepareRun"},
    "GMM": {"FitGMM", "LabelShard", "LabelSplit", "ClassPrior", "PrepareRun"},
    "mean-L file": {"MeanLightness", "PrepareRun"},
    "Lab manifest": {"LabSplit", "MeanLightness", "LabelSplit", "ClassPrior", "PrepareRun"},
    "label manifest": {"LabelSplit", "PrepareRun"},
    "class prior": {"ClassPrior", "PrepareRun"},
    "run inputs": {"PrepareRun"},
}


def above(victim, root):
    """task_ids of `victim` and of every task that requires it, directly or not (from requires()),
    through deep complete()s only: a task complete while its own file exists (the GMM) hides
    what it requires."""
    below = {}

    def walk(task):
        if task.task_id not in below:
            deep = type(task).complete is tasks.Stage.complete
            deps = luigi.task.flatten(task.requires()) if deep else []
            below[task.task_id] = set().union(*[{d.task_id} | walk(d) for d in deps]) if deps else set()
        return below[task.task_id]
    walk(root)
    return {victim.task_id} | {t for t, deps in below.items() if victim.task_id in deps}


def files(work):
    """{path: (inode, mtime)} of every file: an atomic rewrite gives a new inode."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(work).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(dataset, work dir) of a finished PrepareRun, built once."""
    base = tmp_path_factory.mktemp("finished")
    dataset = make_photo_dataset(base / "photos")
    with work_dir_settings(base / "work") as work:
        build(prepare(dataset))
    return dataset, work


@pytest.fixture
def deleted(finished, work, ran):
    """delete(kind) -> (victim task, victim path, files rewritten by the rebuild), on a fresh
    copy of the finished work dir; `ran` holds what the rebuild ran."""
    dataset, template = finished
    shutil.copytree(template, work)

    def delete(kind):
        luigi.task_register.Register.clear_instance_cache()
        victim = victim_task(kind, prepare(dataset))
        path = Path(luigi.task.flatten(victim.output())[0].path)   # a shard batch: its one shard
        original = path.read_bytes().replace(str(template).encode(), str(work).encode())  # inputs.json
        path.unlink()
        before = files(work)
        ran.clear()
        build(prepare(dataset))
        assert path.read_bytes() == original, "rebuilt differently"
        after = files(work)
        return victim, path, {p for p in after if before.get(p) != after[p]}
    delete.dataset = dataset
    return delete


@pytest.mark.parametrize("kind", list(RERUN))
def test_deleting_an_artifact_reruns_its_task_and_those_above_it(deleted, ran, kind):
    victim, path, _ = deleted(kind)
    assert set(ran.families()) == RERUN[kind]
    ids = Counter(t.task_id for t in ran.tasks())          # each once, exactly those
    assert set(ids) == above(victim, prepare(deleted.dataset)) and max(ids.values()) == 1
    ran.clear()
    build(prepare(deleted.dataset))
    assert ran.families() == []


@pytest.mark.parametrize("kind", list(RERUN))
def test_deleting_an_artifact_rewrites_only_it(deleted, kind):
    _, path, rewritten = deleted(kind)
    assert rewritten == {path}


def test_deleting_a_runs_best_pt_retrains_it(work, photo_dataset, ran, one_torch_thread):
    """A finished run is complete while done.json and best.pt exist (it no longer needs its
    inputs); without best.pt it trains again and writes it."""
    from train.checkpoint import load_checkpoint
    train = tasks.TrainFCN32s(config=CFG, overrides={"max_iteration": 10}, dataset=str(photo_dataset))
    build(train)
    best = Path(train.output()["best"].path)
    assert load_checkpoint(best)["iteration"] == 10
    best.unlink()
    ran.clear()
    build(train)
    assert ran.families() == ["TrainFCN32s"]
    assert load_checkpoint(best)["iteration"] == 10 and "state_dict" in load_checkpoint(best)
    ran.clear()
    build(train)
    assert ran.families() == []
