"""Early cutoff: a rebuild stops where nothing changed, and batching shards changes no output.

The GMM samples the gmm_images train images of smallest pipeline.plan.sample_key (a hash of the
relative path) and is signed by those images alone (tasks.FitGMM), so an image added outside the
sample reruns its Lab shard, its label shard, the manifests and training, and nothing else; one
added inside the sample refits the GMM and every label shard follows.  Each test checks which
files were written (every write is a rename: a new inode) as well as which tasks ran."""
from pathlib import Path

import luigi
import numpy as np

import tasks
from conftest import build, write_photo
from pipeline.plan import ShardPlan, sample_files, sample_key
from pipeline.preprocess import build_lab_shard, gmm_features
from pipeline.shards import read_array
from pipeline.splits import list_split

CFG = 102
GMM_IMAGES = 6           # of the fixture's 12 train photos, so the sample leaves images out
OVERRIDES = {"gmm_images": GMM_IMAGES}


def task(cls, **params):
    """A task made as a new process would: Luigi's instance cache (whose instances remember
    their signatures) cleared first."""
    luigi.task_register.Register.clear_instance_cache()
    return cls(config=CFG, overrides=OVERRIDES, **params)


NOT_OUTPUTS = ("cache", "logs")   # the fingerprint cache; Luigi's log file, which the first build
#                                  of a process opens in its work dir and every build appends to


def snapshot(work):
    """{path relative to work: (inode, mtime)} of every output (not NOT_OUTPUTS)."""
    return {p.relative_to(work): (st.st_ino, st.st_mtime_ns) for p in work.rglob("*")
            if p.is_file() and p.relative_to(work).parts[0] not in NOT_OUTPUTS for st in [p.stat()]}


def written(before, work):
    """Outputs created or replaced since `before`."""
    return {p for p, state in snapshot(work).items() if before.get(p) != state}


def new_train_image(dataset, inside: bool) -> str:
    """Add a photo at the end of the train list whose name ranks inside (or outside) the
    GMM's sample of the current list; return its relative path."""
    cutoff = sorted(sample_key(rp, 0) for rp in list_split(dataset, "train"))[GMM_IMAGES - 1]
    rp = next(rp for rp in (f"train/new{i:03d}.png" for i in range(1000))
              if (sample_key(rp, 0) < cutoff) == inside)
    write_photo(dataset / rp, seed=77)
    with open(dataset / "files_train.txt", "a") as f:
        f.write(rp + "\n")
    return rp


def h5_in(files, top):
    return sorted(p for p in files if p.parts[0] == top and p.suffix == ".h5")


def test_an_image_outside_the_gmm_sample_reruns_only_its_shards_the_manifests_and_training(
        work, photo_dataset, ran):
    build(task(tasks.TrainFCN32s, dataset=str(photo_dataset)))
    gmm_before = sorted((work / "gmm").rglob("*.npz"))
    before = snapshot(work)
    ran.clear()
    rp = new_train_image(photo_dataset, inside=False)
    build(task(tasks.TrainFCN32s, dataset=str(photo_dataset)))

    new = written(before, work)
    lab, labels = h5_in(new, "lab"), h5_in(new, "labels")
    assert len(lab) == len(labels) == 1                      # exactly its Lab shard and its label shard
    assert rp in read_array(work / lab[0], "paths") and rp in read_array(work / labels[0], "paths")
    old_label_dirs = {p.parent for p in before if p.parts[0] == "labels"}
    assert labels[0].parent in old_label_dirs                 # same GMM: the same label folder
    assert {p.parts[0] for p in new} == {"lab", "labels", "stats", "runs"}   # no GMM file
    assert sorted((work / "gmm").rglob("*.npz")) == gmm_before
    manifests = sorted(p.name.split("-")[0] for p in new if p.suffix == ".json" and p.parts[0] != "runs")
    assert manifests == ["mean", "train", "train"]            # Lab and label manifests of train, mean L
    assert sorted(ran.families()) == ["LabShard", "LabSplit", "LabelShard", "LabelSplit",
                                      "MeanLightness", "PrepareRun", "TrainFCN32s"]


def test_an_image_inside_the_gmm_sample_refits_the_gmm_and_every_label_shard_follows(work, photo_dataset, ran):
    build(task(tasks.PrepareRun, dataset=str(photo_dataset)))
    before = snapshot(work)
    ran.clear()
    new_train_image(photo_dataset, inside=True)
    prepare = task(tasks.PrepareRun, dataset=str(photo_dataset))
    build(prepare)
    new = written(before, work)
    assert ran.families().count("FitGMM") == 1 and len([p for p in new if p.parts[0] == "gmm"]) == 1
    assert len(h5_in(new, "lab")) == 1                        # Lab shards: still only the new image's
    every_label_shard = {Path(label).relative_to(work) for split in ("train", "val")
                         for _, label in prepare.requires()[split].pairs()}
    assert set(h5_in(new, "labels")) == every_label_shard     # all rebuilt, under the new GMM's folder
    assert not every_label_shard & set(before)


def test_gmm_features_depend_only_on_the_sampled_images(tmp_path):
    """An image that does not rank among the first n changes no feature; one that does changes them."""
    names = [f"im{i:02d}.png" for i in range(10)]
    for i, rp in enumerate(names):
        write_photo(tmp_path / rp, seed=i)
    keys = sorted(names, key=lambda rp: sample_key(rp, 3))
    outside, inside = keys[-1], keys[0]

    def features(files, shard_size=3):
        paths = []
        for j in range(0, len(files), shard_size):
            paths.append(tmp_path / f"shard{len(files)}-{j}.h5")
            build_lab_shard(tmp_path, files[j:j + shard_size], 16, paths[-1])
        return gmm_features(paths, 5, per_image=7, per_image_few=7, seed=3)

    base = [rp for rp in names if rp != outside and rp != inside]
    reference = features(base + [outside])
    assert np.array_equal(features(base[::-1] + [outside], shard_size=4), reference)   # order, shards: no matter
    assert len(reference) == 5 * 7
    assert not np.array_equal(features(base + [outside, inside]), reference)


def test_the_sample_is_chosen_by_path_alone():
    plans = [ShardPlan("a", ("x/1", "x/2"), ("f1", "f2")), ShardPlan("b", ("x/3",), ("f3",))]
    sample = sample_files(plans, 2, seed=0)
    assert [(rp, fp) for rp, fp, _ in sample] == sorted(
        [("x/1", "f1"), ("x/2", "f2"), ("x/3", "f3")], key=lambda t: sample_key(t[0], 0))[:2]
    assert [plans[i].files.count(rp) for rp, _, i in sample] == [1, 1]   # each with its shard
    assert sample_files(plans[::-1], 2, seed=0) == [(rp, fp, 1 - i) for rp, fp, i in sample]


def test_batching_shards_changes_no_output_name(work, photo_dataset, ran, monkeypatch):
    """All of a split's shards in one Luigi task, then one task per shard: nothing reruns."""
    monkeypatch.setattr(tasks, "MAX_SHARD_TASKS", 1)
    build(task(tasks.PrepareRun, dataset=str(photo_dataset)))
    fam = ran.families()
    assert fam.count("LabShard") == fam.count("LabelShard") == 2          # train and val: a task each
    n_shards = len(list((work / "lab").rglob("*.h5")))
    assert n_shards >= 4
    ran.clear()
    monkeypatch.setattr(tasks, "MAX_SHARD_TASKS", 128)
    build(task(tasks.PrepareRun, dataset=str(photo_dataset)))
    assert ran.families() == []
    next((work / "lab").rglob("*.h5")).unlink()
    build(task(tasks.PrepareRun, dataset=str(photo_dataset)))
    fam = ran.families()
    assert fam.count("LabShard") == fam.count("LabelShard") == 1          # one shard per task now
    assert len(list((work / "lab").rglob("*.h5"))) == n_shards
