"""Which experiment won: `colorize-fcn evaluate` on a folder, what `runs` says each AuC was
measured on, the `compare` page, and the Sweep task; two finished config-102 runs that differ
in lr, trained once for the module."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tasks
from conftest import build, work_dir_settings, write_photo
from inference.cli import main
from inference.disk import human_size
from inference.runs import list_runs

OVER = {"max_iteration": 4, "interval_validate": 2}
LRS = (3e-3, 1e-3)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """(work dir, dataset, [run folder per lr], held-out photo folder)."""
    base = tmp_path_factory.mktemp("compare")
    dataset, work, photos = base / "photos", base / "work", base / "test-photos"
    names = {"train": [f"train/p{i:02d}.png" for i in range(8)], "val": [f"val/v{i}.png" for i in range(3)]}
    for i, rp in enumerate(names["train"] + names["val"]):
        write_photo(dataset / rp, seed=i)
    for split, files in names.items():
        (dataset / f"files_{split}.txt").write_text("\n".join(files) + "\n")
    for i in range(3):
        write_photo(photos / f"x{i}.png", seed=300 + i)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with work_dir_settings(work):
        runs = [tasks.TrainFCN32s(config=102, overrides=dict(OVER, lr=lr), dataset=str(dataset)) for lr in LRS]
        build(*runs)
        return work, dataset, [r.run_dir() for r in runs], photos


@pytest.fixture
def runs_copy(two_runs, tmp_path):
    """The module's work dir copied (tests that add evaluations do not see each other's)."""
    work, dataset, runs, photos = two_runs
    shutil.copytree(work, tmp_path / "work")
    return tmp_path / "work", dataset, [tmp_path / "work" / "runs" / r.name for r in runs], photos


def test_cli_evaluate_scores_a_folder_through_the_evaluate_task(runs_copy, capsys):
    work, dataset, (run, _), photos = runs_copy
    assert main(["evaluate", "--model", str(run), str(photos), "--device", "cpu", "--gallery", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{run.name} on folder test-photos (3 images, 1 skipped: undecodable 1):" in out
    evals = list(run.glob("eval-*/metrics.json"))
    assert len(evals) == 1 and f"Report: {evals[0].parent / 'report.html'}" in out
    metrics = json.loads(evals[0].read_text())
    assert metrics["evaluated_on"]["folder"] == str(photos.resolve()) and metrics["n_images"] == 3
    assert f"gray {metrics['methods']['gray']['auc']:.2f}".split() == \
        next(line for line in out.splitlines() if line.startswith("gray")).split()[:2]
    assert list((work / "lab").rglob("all-*.json"))                 # the folder's manifest, cached in the work dir
    assert main(["evaluate", "--model", str(run), str(photos), "--device", "cpu", "--gallery", "1"]) == 0
    assert len(list(run.glob("eval-*/metrics.json"))) == 1          # a rerun is a no-op


def test_cli_evaluate_refuses_unfinished_runs_and_changed_configs(runs_copy, capsys):
    work, dataset, (run, other), photos = runs_copy
    (other / "done.json").unlink()
    assert main(["evaluate", "--model", str(other), str(photos)]) == 2
    assert "has not finished training" in capsys.readouterr().err
    inputs = json.loads((run / "inputs.json").read_text())
    inputs["cfg"]["gmm_seed"] = 7                  # config 102 no longer gives this run's settings
    (run / "inputs.json").write_text(json.dumps(inputs))
    assert main(["evaluate", "--model", str(run), str(photos), "--device", "cpu"]) == 35
    assert not list(run.glob("eval-*")) and len(list((work / "runs").iterdir())) == 2   # nothing trained


def test_runs_shows_what_each_auc_was_measured_on_and_prefers_held_out(runs_copy, capsys):
    work, dataset, (run, other), photos = runs_copy
    with work_dir_settings(work):
        held_out = tasks.Evaluate(config=102, overrides=dict(OVER, lr=LRS[0]), dataset=str(dataset),
                                  arch="fcn32s", gallery=1)
        on_train = tasks.Evaluate(config=102, overrides=dict(OVER, lr=LRS[0]), dataset=str(dataset),
                                  arch="fcn32s", gallery=1, split="train")
        build(held_out)
        build(on_train)                            # the latest, but on the training photos
    val = json.loads(Path(held_out.output().path).read_text())
    train = json.loads(Path(on_train.output().path).read_text())
    assert val["evaluated_on"]["held_out"] is True and train["evaluated_on"]["held_out"] is False
    rows = {r["run"]: r for r in list_runs(work)}
    r = rows[run.name]
    assert r["auc"] == val["methods"]["model/annealed"]["auc"] != train["methods"]["model/annealed"]["auc"]
    assert r["auc_on"] == "val (3)" and rows[other.name]["auc_on"] is None
    assert [e["on"] for e in r["evaluations"]] == ["val (3)", "train (8)"]
    assert main(["runs", "--work-dir", str(work)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "AUC ON" in table[0]
    line = next(x for x in table if x.endswith(run.name))
    assert line.split()[-6:-2] == [f"{r['auc']:.2f}", "val", "(3)", human_size(r["size_bytes"]).split()[0]]
    assert line.split()[-1] == run.name                      # ... AUC, AUC ON, SIZE, RUN
    assert main(["runs", "--work-dir", str(work), "--json"]) == 0
    as_json = {x["run"]: x for x in json.loads(capsys.readouterr().out)}
    assert as_json[run.name]["auc_on"] == "val (3)"
    assert as_json[run.name]["evaluations"][1]["evaluated_on"]["split"] == "train"


def test_compare_writes_one_page_with_both_runs_curves_and_the_same_photos(runs_copy, tmp_path, capsys):
    """The missing evaluations on the folder are made first (the Evaluate task), then one page:
    the differing setting (lr), both runs' metrics, three figures and the same photos per run."""
    work, dataset, (a, b), photos = runs_copy
    out = tmp_path / "cmp" / "compare.html"
    assert main(["compare", str(a), str(b), "--on", str(photos), "--no-evaluate", "--out", str(out)]) == 1
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 2 and all(s.startswith("luigi --module tasks Evaluate --config 102 --arch fcn32s") and
                                  f"--images {photos.resolve()}" in s for s in said) and not out.exists()
    assert main(["compare", str(a), str(b), "--on", str(photos), "--out", str(out), "--device", "cpu",
                 "--gallery", "2"]) == 0
    page = out.read_text()
    metrics = [json.loads(next(r.glob("eval-*/metrics.json")).read_text()) for r in (a, b)]
    for m in metrics:
        assert m["evaluated_on"]["folder"] == str(photos.resolve())
        assert f"<td>{m['methods']['model/annealed']['auc']:.2f}</td>" in page
    settings = page[page.index('<table id="settings">'):].split("</table>")[0]
    assert "<th>lr</th><td>0.003</td><td>0.001</td>" in settings and "max_iteration" not in settings
    for fig in ("auc", "loss", "iou"):
        assert f'<img id="{fig}" src="data:image/png;base64,' in page
    gallery = page[page.index('<table id="gallery">'):].split("</table>")[0]
    rows = gallery.split("<tr>")[2:]
    assert len(rows) == 2 and all(r.count("<img class='photo'") == 4 for r in rows)   # gray, A, B, truth
    if shutil.which("chromium"):                     # optional: it renders in a headless browser
        shot = tmp_path / "page.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                        "--window-size=1300,2600", out.as_uri()], capture_output=True, timeout=180)
        pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 2000     # figures and photos drawn, not a blank page
    n_evals = [len(list(r.glob("eval-*"))) for r in (a, b)]
    assert main(["compare", str(a), str(b), "--on", str(photos), "--out", str(out), "--device", "cpu"]) == 0
    assert [len(list(r.glob("eval-*"))) for r in (a, b)] == n_evals == [1, 1]        # evaluated once


# ----------------------------------------------------------------------------- Sweep
def test_sweep_grid_parsing_and_order():
    from pipeline.config import ConfigError
    from pipeline.sweep import expand_grid, parse_configs, parse_grid
    assert parse_configs("14, 32") == (14, 32)
    grid = parse_grid('{"seed": [0, 1], "lr": [1e-5, 1e-6]}')
    assert expand_grid(grid) == [{"lr": 1e-5, "seed": 0}, {"lr": 1e-5, "seed": 1},
                                 {"lr": 1e-6, "seed": 0}, {"lr": 1e-6, "seed": 1}]
    assert expand_grid({}) == [{}]
    for bad, says in (('{"lr": 1e-5}', "non-empty list"), ('{"lr": [-1]}', "lr must be"),
                      ('{"lr": [1e-5, 1e-5]}', "twice"), ("[1]", "JSON object"), ('{"lr": [', "not valid JSON")):
        with pytest.raises(ConfigError, match=says):
            parse_grid(bad)
    for bad in ("14,14", "999", "x", ""):
        with pytest.raises(ConfigError):
            parse_configs(bad)


def test_sweep_2x2_trains_4_runs_builds_labels_once_and_writes_the_compare_page(two_runs, tmp_path, ran):
    work, dataset, _, _ = two_runs
    with work_dir_settings(tmp_path / "work"):
        sweep = tasks.Sweep(configs="102", overrides=OVER, overrides_grid='{"lr": [3e-3, 1e-3], "seed": [0, 1]}',
                            dataset=str(dataset), gallery=1)
        build(sweep)
        assert ran.count("TrainFCN32s") == 4 and ran.count("Evaluate") == 4 and ran.count("Sweep") == 1
        labels = tasks.LabelSplit.from_cfg(sweep.requires()[0].cfg, dataset=str(dataset), split="train")
        val = labels.clone(split="val")
        n_batches = len(labels.requires()["labels"]) + len(val.requires()["labels"])
        assert ran.count("FitGMM") == 1 and ran.count("LabelShard") == n_batches     # one label setting, built once
        assert len({ev.requires()["run"].run_dir() for ev in sweep.requires()}) == 4
        page = Path(sweep.output().path).read_text()
        assert page.count("<img class='photo'") == 6                                  # gray, A-D, truth
        assert "<th>lr</th><td>0.003</td><td>0.003</td><td>0.001</td><td>0.001</td>" in page
        assert "<th>seed</th><td>0</td><td>1</td><td>0</td><td>1</td>" in page
        ran.clear()
        build(sweep)
        assert ran.families() == []


def test_cli_evaluate_says_a_missing_folder_is_not_one(two_runs, tmp_path, capsys):
    run = two_runs[2][0]
    assert main(["evaluate", "--model", str(run), str(tmp_path / "no-such-photos")]) == 2
    assert f"{tmp_path / 'no-such-photos'} is not a folder" in capsys.readouterr().err
