"""Each setting that changes an output changes its stage's signature (so its output's name):
every significant parameter of every stage, and every config key that reaches a run.  A
parameter whose change leaves a signature as it is must be listed in NOT_IN_SIG with why,
and the test checks that it genuinely changes no output.  Signatures only (no shard is
built) except the two builds that show FitGMM ignores shard_size: ~10 s."""
import inspect
import os

import luigi
import numpy as np
import pytest

import tasks
from conftest import build, make_photo_dataset, work_dir_settings, write_photo
from pipeline.config import SCHEMA, ConfigError, resolve_config
from pipeline.gmm import load_gmm
from pipeline.stage import ShardBatch, Stage

CONFIG = 102
# Stage classes that are bases of the others, not tasks of the graph
BASES = {"Stage", "ShardBatch", "LabParams", "GMMParams", "LabelParams", "ConfigTask", "TrainRun"}
# Parameters that place a task in the graph rather than say what it computes: a batch's shard
# list (each shard's signature covers its own files) and the progress line's stage
STRUCTURAL = {"batch"}
# (family, parameter) whose change leaves the signature as it is, and why no output changes
NOT_IN_SIG = {
    ("FitGMM", "shard_size"): "how images are grouped into shards; the GMM sample is chosen per image",
}
# (family, config key) that does not reach that task's outputs
CFG_NOT_IN_SIG = {
    ("TrainFCN32s", "init_config"): "an FCN-32s starts from no coarser run",
}
# other values for the parameters that are not config keys
OTHER = {"split": "tiny", "arch": "fcn8s", "temperature": 0.5, "gallery": 2, "config": 101,
         "overrides": {"lr": 1e-4}, "configs": "101", "overrides_grid": '{"lr": [0.001]}', "on": "tiny"}
# other values for string config keys, the first one the schema accepts (split names first:
# any name passes the schema, but only these splits exist in the dataset)
STRINGS = ("tiny", "val", "adam", "sgd", "soft", "uniform", "mean_k", "sum_k", "val_loss", "mean_iou", "one",
           "fp32", "bf16", "on", "off")


def other_value(key, value):
    """A value of config key `key` other than `value` that config CONFIG accepts with it."""
    if key == "init_config":
        candidates = [101]                 # a config whose splits the test dataset has
    elif isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, (int, float)):
        candidates = [value * 2, value + 1, value / 2, value - 1]    # the schema rejects what does not fit
    else:
        candidates = list(STRINGS)
    for c in candidates:
        if c == value:
            continue
        try:
            resolve_config(CONFIG, {key: c})
        except ConfigError:
            continue
        return c
    raise AssertionError(f"no other valid value found for config key {key!r}: extend STRINGS or other_value")


def _sig(task):
    return tuple(task.shard_sigs()) if isinstance(task, ShardBatch) else task.sig()


def _stages(ds):
    cfg = resolve_config(CONFIG)
    lab = tasks.LabSplit.from_cfg(cfg, dataset=ds, split="train")
    labels = tasks.LabelSplit.from_cfg(cfg, dataset=ds, split="train")
    found = {"LabSplit": lab, "LabShard": lab.requires()[0],
             "MeanLightness": tasks.MeanLightness.from_cfg(cfg, dataset=ds),
             "FitGMM": tasks.FitGMM.from_cfg(cfg, dataset=ds), "LabelSplit": labels,
             "LabelShard": labels.requires()["labels"][0],
             "ClassPrior": tasks.ClassPrior.from_cfg(cfg, dataset=ds, split="train"),
             "PrepareRun": tasks.PrepareRun(config=CONFIG, dataset=ds),
             "Evaluate": tasks.Evaluate(config=CONFIG, dataset=ds)}
    for name, cls in tasks.TRAIN_TASKS.items():
        found[cls.__name__] = cls(config=CONFIG, dataset=ds)
    found["Sweep"] = tasks.Sweep(configs=str(CONFIG), dataset=ds)
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigs")
    with work_dir_settings(root / "work"):
        # another dataset (one train photo differs) for gmm_dataset: the labels' GMM is its
        other = make_photo_dataset(root / "others")
        write_photo(other / "train" / "p00.png", seed=99)
        OTHER["gmm_dataset"] = str(other)
        OTHER["images"] = str(other / "val")      # Evaluate --images: a folder of photos
        yield make_photo_dataset(root / "photos")


def test_every_stage_is_walked(dataset):
    graph = {name for name, cls in vars(tasks).items()
             if inspect.isclass(cls) and issubclass(cls, Stage) and name not in BASES}
    assert graph == set(_stages(str(dataset)))


def test_each_significant_parameter_changes_its_stages_signature(dataset):
    luigi.task_register.Register.clear_instance_cache()
    unchanged = set()
    for family, task in _stages(str(dataset)).items():
        base = _sig(task)
        for name, param in task.get_params():
            if not param.significant or name in STRUCTURAL or name == "dataset":
                continue
            value = getattr(task, name)
            other = OTHER[name] if name in OTHER else other_value(name, value)
            changed = _sig(task.clone(**{name: other}))
            if changed == base:
                unchanged.add((family, name))
    assert unchanged == set(NOT_IN_SIG)


def test_each_config_key_changes_the_runs_signature(dataset):
    """Every config key that reaches a run: --overrides of it make another run (and evaluation)."""
    luigi.task_register.Register.clear_instance_cache()
    cfg, unchanged = resolve_config(CONFIG), set()
    runs = {cls.__name__: cls for cls in tasks.TRAIN_TASKS.values()}
    runs["Evaluate"] = tasks.Evaluate
    for family, cls in runs.items():
        base = cls(config=CONFIG, dataset=str(dataset)).sig()
        for key in SCHEMA:
            other = other_value(key, cfg[key])
            if cls(config=CONFIG, dataset=str(dataset), overrides={key: other}).sig() == base:
                unchanged.add((family, key))
    assert unchanged == set(CFG_NOT_IN_SIG)


def test_the_datasets_location_is_not_in_any_signature_but_its_files_are(tmp_path):
    """'dataset' is left out of every signature: the same files moved elsewhere give the same
    signatures (rename keeps their stat fingerprints); other files give others."""
    with work_dir_settings(tmp_path / "work"):
        root = make_photo_dataset(tmp_path / "a")
        luigi.task_register.Register.clear_instance_cache()
        before = {k: _sig(t) for k, t in _stages(str(root)).items()}
        os.rename(root, tmp_path / "moved")
        luigi.task_register.Register.clear_instance_cache()
        assert {k: _sig(t) for k, t in _stages(str(tmp_path / "moved")).items()} == before
        (tmp_path / "moved" / "files_train.txt").write_text("train/p00.png\ntrain/p01.png\n")
        luigi.task_register.Register.clear_instance_cache()
        after = {k: _sig(t) for k, t in _stages(str(tmp_path / "moved")).items()}
        assert {k for k in before if after[k] == before[k]} == set()


def test_fitgmm_shard_size_changes_no_gmm(tmp_path, dataset):
    """NOT_IN_SIG's FitGMM shard_size: the GMM fitted from shards of 4 and of 2 images is the same."""
    fits = []
    for shard_size in (4, 2):
        with work_dir_settings(tmp_path / f"work{shard_size}"):
            task = tasks.FitGMM.from_cfg(resolve_config(CONFIG, {"shard_size": shard_size}), dataset=str(dataset))
            build(task)
            fits.append(load_gmm(task.output().path))
    assert fits[0].keys() == fits[1].keys()
    for k in fits[0]:
        np.testing.assert_array_equal(fits[0][k], fits[1][k])
