"""Training through Luigi: FCN-32s then FCN-16s from the label shards, stale-only reruns, resume."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tasks
from conftest import build
from pipeline.color import rgb_to_lab
from test_colorize import assert_keeps_lightness
from pipeline.config import ConfigError, resolve_config

CFG = 102


def fcn16(dataset, **overrides):
    return tasks.TrainFCN16s(config=CFG, overrides=overrides, dataset=str(dataset))


def test_train_fcn16s_runs_the_whole_pipeline_and_writes_every_run_file(work, photo_dataset, ran):
    build(fcn16(photo_dataset))
    fam = ran.families()
    assert fam.count("TrainFCN32s") == 1 and fam.count("TrainFCN16s") == 1
    assert fam.count("FitGMM") == 1 and fam.count("MeanLightness") == 1
    t16 = fcn16(photo_dataset)
    for run in (t16.init_task().run_dir(), t16.run_dir()):
        for name in ("done.json", "best.pt", "checkpoint.pt", "log.csv", "config.json", "loss.png", "iou.png"):
            assert (run / name).exists(), run / name
        assert sorted(p.name for p in (run / "tiles").glob("*.jpg")) == ["iter000010.jpg", "iter000020.jpg"]
        assert list((run / "tb").iterdir())
        rows = list(csv.DictReader(open(run / "log.csv")))
        assert [r["iteration"] for r in rows if r["split"] == "valid"] == ["10", "20"]
        config = json.loads((run / "config.json").read_text())
        assert config["cfg"]["lr"] == resolve_config(CFG)["lr"] and len(config["git"]["revision"]) == 40
        assert (config["data"]["n_train"], config["data"]["n_val"], config["data"]["image_size"]) == (12, 4, 32)
        valid = [(float(r["loss"]), int(r["iteration"])) for r in rows if r["split"] == "valid"]
        done = json.loads((run / "done.json").read_text())
        best = torch.load(run / "best.pt", weights_only=True)
        assert done["best_iteration"] == best["iteration"] == min(valid)[1] and done["iterations"] == 20
        assert done["best_val_loss"] == pytest.approx(min(valid)[0])
    # FCN-16s started from the FCN-32s's best.pt
    config16 = json.loads((t16.run_dir() / "config.json").read_text())
    assert config16["init_checkpoint"] == f"../{t16.init_task().run_dir().name}/best.pt"   # relative: movable
    ckpt = torch.load(t16.run_dir() / "best.pt", weights_only=True)
    assert ckpt["settings"]["arch"] == "fcn16s" and ckpt["settings"]["im_size"] == resolve_config(CFG)["im_size"]
    ran.clear()
    build(fcn16(photo_dataset))
    assert ran.families() == []


def test_changing_lr_reruns_only_training(work, photo_dataset, ran):
    build(fcn16(photo_dataset))
    ran.clear()
    build(fcn16(photo_dataset, lr=1e-3))
    assert sorted(ran.families()) == ["PrepareRun", "PrepareRun", "TrainFCN16s", "TrainFCN32s"]


def test_changing_k_reruns_labels_and_training_not_lab_shards(work, photo_dataset, ran):
    build(fcn16(photo_dataset))
    ran.clear()
    build(fcn16(photo_dataset, n_clusters=5))
    fam = ran.families()
    assert fam.count("LabShard") == 0 and fam.count("MeanLightness") == 0
    assert fam.count("FitGMM") == 1 and fam.count("LabelShard") >= 3
    assert fam.count("TrainFCN32s") == 1 and fam.count("TrainFCN16s") == 1


def test_configs_with_equal_label_settings_share_label_shards(work, photo_dataset, ran):
    build(tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset)))
    ran.clear()
    build(tasks.TrainFCN32s(config=CFG, overrides={"weight_decay": 1e-4, "max_iteration": 10},
                            dataset=str(photo_dataset)))
    assert sorted(ran.families()) == ["PrepareRun", "TrainFCN32s"]


def test_interrupted_training_resumes_from_its_checkpoint(work, photo_dataset, ran, monkeypatch):
    import train.fit
    real_fit = train.fit.fit

    def crash_after_12(*args, **kwargs):
        real_fit(*args, **kwargs, stop_after=12)
        raise RuntimeError("simulated crash")
    monkeypatch.setattr(train.fit, "fit", crash_after_12)
    t32 = tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset))
    result = tasks.luigi.build([t32], local_scheduler=True, log_level="WARNING")
    assert not result and not Path(t32.output()["done"].path).exists()
    monkeypatch.setattr(train.fit, "fit", real_fit)
    build(tasks.TrainFCN32s(config=CFG, dataset=str(photo_dataset)))
    done = json.loads(Path(t32.output()["done"].path).read_text())
    assert done["resumed_from"] == 10 and done["iterations"] == 20
    rows = [r["iteration"] for r in csv.DictReader(open(t32.run_dir() / "log.csv")) if r["split"] == "valid"]
    assert rows == ["10", "20"]


def test_unknown_config_or_key_is_a_one_line_error_listing_valid_ones():
    with pytest.raises(ConfigError, match=r"valid configs: \[7, 14, 15"):
        resolve_config(3)
    with pytest.raises(ConfigError, match="unknown config key.*'lrate'.*valid keys"):
        resolve_config(14, {"lrate": 1})


def test_the_demo_ends_with_a_report_a_colorized_held_out_photo_and_commands(work, tmp_path, capsys):
    """Demo on the bundled photos with the tiny test config: trains, evaluates on the held-out
    val photos, colorizes one of them and prints where everything is, last."""
    dest = tmp_path / "samples"
    build(tasks.Demo(config=CFG, dest=str(dest)))
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    tail = out[out.index("Demo finished."):]
    stages = [line for line in captured.err.splitlines() if line.startswith("demo: stage ")]
    assert [line.split(":")[1] for line in stages] == [f" stage {i} of 5" for i in range(1, 6)], stages
    assert re.match(r"  trained fcn32s-c102-\w+: best loss \d\.\d{4} at iteration \d+, val on 'val'$", tail[1]), tail
    assert re.match(r"  held-out photos \(split 'val', 2 images\): AuC \d+\.\d%", tail[3]), tail
    report = Path(tail[-4].split("Report:", 1)[1].strip())
    coloured = Path(tail[-3].split("Colorized:", 1)[1].strip())
    assert report.name == "report.html" and report.is_file() and report.parent.name.startswith("eval-")
    assert coloured.is_file() and coloured.parent.name == "demo" and coloured.name == "chelsea.png"
    # the colorized photo: the input's size and lightness, and colour (not a gray copy)
    photo, result = np.asarray(Image.open(dest / "chelsea.png").convert("RGB")), np.asarray(Image.open(coloured))
    assert result.shape == photo.shape and result.dtype == np.uint8
    assert_keeps_lightness(result, rgb_to_lab(photo)[..., 0])
    lab = rgb_to_lab(result)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    assert np.median(chroma) > 3 and not np.array_equal(result, photo)
    assert "colorize-fcn colorize --model " in tail[-2] and tail[-1].startswith("Curves:")
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["n_images"] == 2                          # the val photos (chelsea, coffee)
