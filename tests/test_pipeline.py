"""The preprocessing stages end to end through Luigi, and the stale-only rule:
each test checks which tasks actually ran."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tasks
from conftest import build, write_photo
from pipeline.gmm import load_gmm, posteriors
from pipeline.color import ab_to_hue_chroma
from pipeline.config import CONFIGS, resolve_config
from pipeline.labels import lowpass_ab
from pipeline.shards import check_ab, read_array, read_attrs

REPO = Path(__file__).resolve().parents[1]
CFG = 102   # tiny test config: 32 px images, K=4, low-pass 8, shard_size 4


def labels(dataset, **overrides):
    return tasks.PrepareRun(config=CFG, overrides=overrides, dataset=str(dataset))


def train_labels(dataset):
    """The LabelSplit task of the train split under the test config."""
    return tasks.LabelSplit.from_cfg(resolve_config(CFG), dataset=str(dataset), split="train")


def test_full_preprocessing_then_identical_rerun_runs_nothing(work, photo_dataset, ran):
    build(labels(photo_dataset))
    fam = ran.families()
    assert fam.count("FitGMM") == 1 and fam.count("MeanLightness") == 1
    n_lab = fam.count("LabShard")
    assert n_lab >= 3 and fam.count("LabelShard") == n_lab
    ran.clear()
    build(labels(photo_dataset))
    assert ran.families() == []


def _check_labels_against_sklearn(dataset, k, lowpass, **overrides):
    """Every train label shard holds, row by row, sklearn's posteriors of the low-passed ab of
    the Lab shard's row under the stage's GMM (K components, targets at 32 / lowpass px);
    returns the number of images checked."""
    from sklearn.mixture import GaussianMixture
    split = tasks.LabelSplit.from_cfg(resolve_config(CFG, overrides), dataset=str(dataset), split="train")
    gmm = load_gmm(split.requires()["labels"][0].requires()["gmm"].output().path)
    assert len(gmm["weights"]) == k
    gm = GaussianMixture(k, covariance_type="full")
    gm.weights_, gm.means_, gm.covariances_ = gmm["weights"], gmm["means"], gmm["covariances"]
    gm.precisions_cholesky_ = np.linalg.inv(np.linalg.cholesky(gmm["covariances"])).transpose(0, 2, 1)
    total, side = 0, 32 // lowpass
    for lab_path, label_path in split.pairs():
        paths = read_array(lab_path, "paths")
        assert list(read_array(label_path, "paths")) == list(paths)
        ab = check_ab(read_array(lab_path, "ab"))                          # (N, 2, S, S) int8
        post = read_array(label_path, "posteriors").astype(np.float64)   # (N, K, side, side)
        assert post.shape[1:] == (k, side, side)
        for i in range(len(paths)):
            small = lowpass_ab(ab[i], lowpass)
            ref = gm.predict_proba(ab_to_hue_chroma(small[0], small[1]).reshape(-1, 2))
            got = post[i].reshape(k, -1).T
            assert np.abs(got - ref).max() < 1e-3
            total += 1
    return total


def test_label_shards_agree_with_sklearn_and_align_with_lab_shards(work, photo_dataset):
    build(labels(photo_dataset))
    assert _check_labels_against_sklearn(photo_dataset, 4, 8) == 12


def test_changing_a_posterior_only_setting_reruns_only_the_label_shards(work, photo_dataset, ran):
    build(labels(photo_dataset))
    gmm_before = {p.name: p.read_bytes() for p in (work / "gmm").rglob("*.npz")}
    ran.clear()
    build(labels(photo_dataset, img_lowpass=4))
    fam = ran.families()
    assert fam.count("LabelShard") >= 3 and fam.count("LabShard") == 0 and fam.count("FitGMM") == 0
    assert {p.name: p.read_bytes() for p in (work / "gmm").rglob("*.npz")} == gmm_before
    assert _check_labels_against_sklearn(photo_dataset, 4, 4, img_lowpass=4) == 12   # 8x8 targets now


def test_changing_k_reruns_gmm_and_labels_never_lab_shards(work, photo_dataset, ran):
    build(labels(photo_dataset))
    ran.clear()
    build(labels(photo_dataset, n_clusters=6))
    fam = ran.families()
    assert fam.count("FitGMM") == 1 and fam.count("LabelShard") >= 3 and fam.count("LabShard") == 0
    assert _check_labels_against_sklearn(photo_dataset, 6, 8, n_clusters=6) == 12


def _shard_files(task_family_tasks):
    return {Path(t.output().path).name: t for t in task_family_tasks}


def test_modifying_one_image_reruns_only_its_shard_and_what_follows(work, photo_dataset, ran):
    build(labels(photo_dataset))
    ran.clear()
    target = photo_dataset / "val" / "v1.png"
    write_photo(target, seed=99)
    os.utime(target, ns=(1, 1))                     # guarantee a new fingerprint
    build(labels(photo_dataset))
    lab_runs = [t for t in ran.tasks() if t.task_family == "LabShard"]    # a batch of shards per task
    assert len(lab_runs) == 1 and any("val/v1.png" in files for files in lab_runs[0].files)
    # val is not used by the GMM: only that shard's labels follow
    fam = ran.families()
    assert fam.count("FitGMM") == 0 and fam.count("LabelShard") == 1


def test_adding_a_train_image_reconverts_only_its_shard_then_refits(work, photo_dataset, ran):
    build(labels(photo_dataset))
    old_groups = [set(f) for t in ran.tasks() if t.task_family == "LabShard" for f in t.files]
    ran.clear()
    write_photo(photo_dataset / "train" / "extra.png", seed=50)
    lst = photo_dataset / "files_train.txt"
    lines = lst.read_text().split()
    lst.write_text("\n".join(lines[:5] + ["train/extra.png"] + lines[5:]) + "\n")
    build(labels(photo_dataset))
    rerun = set().union(*[set(f) for t in ran.tasks() if t.task_family == "LabShard" for f in t.files])
    # the new file's shard is rebuilt (split in two if the new file is a boundary), nothing else
    assert "train/extra.png" in rerun
    assert any(rerun - {"train/extra.png"} == g for g in old_groups)
    assert ran.families().count("FitGMM") == 1     # below gmm_images every image is in the GMM's sample


def test_deleting_one_label_shard_recomputes_only_that_shard(work, photo_dataset, ran):
    build(labels(photo_dataset))
    split = train_labels(photo_dataset)
    victim = Path(split.pairs()[1][1])
    victim.unlink()
    ran.clear()
    build(labels(photo_dataset))
    label_runs = [t for t in ran.tasks() if t.task_family == "LabelShard"]
    assert [Path(p.path) for t in label_runs for p in t.output()] == [victim]
    assert ran.families().count("LabShard") == 0 and victim.exists()


def test_bumping_a_stage_version_reruns_that_stage_and_what_follows(work, photo_dataset, ran, monkeypatch):
    build(labels(photo_dataset))
    ran.clear()
    monkeypatch.setattr(tasks.LabelShard, "version", 99)
    build(labels(photo_dataset))
    fam = ran.families()
    assert fam.count("LabelShard") >= 3 and fam.count("FitGMM") == 0 and fam.count("LabShard") == 0
    ran.clear()
    monkeypatch.setattr(tasks.FitGMM, "version", 99)
    build(labels(photo_dataset))
    fam = ran.families()
    assert fam.count("FitGMM") == 1 and fam.count("LabelShard") >= 3 and fam.count("LabShard") == 0


def test_uniform_binning_needs_no_fit_on_data(work, photo_dataset, ran):
    build(labels(photo_dataset, binning="uniform"))
    gmm_task = [t for t in ran.tasks() if t.task_family == "FitGMM"][0]
    g = load_gmm(gmm_task.output().path)
    assert gmm_task.requires() == []
    # the saved grid is the original's 2 x 2 grid: (hue, chroma) corners, hue fastest, equal
    # weights, sigma = the Voronoi radius 1 / sqrt(2) (variance 0.5)
    np.testing.assert_array_equal(g["means"], [(0, 0), (1, 0), (0, 1), (1, 1)])
    np.testing.assert_allclose(g["weights"], [0.25] * 4)
    np.testing.assert_allclose(g["covariances"], np.tile(np.eye(2) * 0.5, (4, 1, 1)))
    assert _check_labels_against_sklearn(photo_dataset, 4, 8, binning="uniform") == 12


def test_two_workers_from_the_command_line_build_the_same_outputs(work, photo_dataset, ran):
    """`luigi --workers 2` in a fresh process (as users run it): same outputs as one worker."""
    cmd = [sys.executable, "-m", "luigi", "--module", "tasks", "PrepareRun", "--config", str(CFG),
           "--dataset", str(photo_dataset), "--workers", "2", "--colorize-work-dir", str(work)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    build(labels(photo_dataset))
    assert ran.families() == []
    proc = subprocess.run(cmd[:-2] + ["--colorize-work-dir", str(work) + "-bad"] + ["--config", "999"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert (f"colorize-fcn: error: PrepareRun: ConfigError: unknown config 999; valid configs: {sorted(CONFIGS)}"
            in proc.stderr.splitlines())
