"""A work folder moved (mv) or copied (cp -r) keeps every run usable, and a copy reads its own
files, never the original's: run folders refer to the work folder's files relative to
themselves (pipeline/run_inputs.py)."""
import json
import os
import shutil
from pathlib import Path

import tasks
from conftest import build, work_dir_settings
from inference.cli import main
from pipeline.run_inputs import RunInputs, portable_path, resolve_path

CFG = 102
OVER = {"max_iteration": 2, "interval_validate": 2}


def _json_files_naming(folder: Path, old: Path) -> list:
    """The JSON files under `folder` that name `old` (another work folder)."""
    return [p for p in folder.rglob("*.json") if f"{old}{os.sep}" in p.read_text()]


def _evaluate_and_colorize(work, photo_dataset, run_name, ran, capsys, temperature):
    with work_dir_settings(work):
        ran.clear()
        ev = tasks.Evaluate(config=CFG, overrides=OVER, dataset=str(photo_dataset), arch="fcn32s", gallery=1,
                            temperature=temperature)
        build(ev)
        assert ran.families() == ["Evaluate"]                   # nothing rebuilt, nothing retrained
        assert Path(ev.output().path).is_relative_to(work / "runs" / run_name)
    capsys.readouterr()
    out = work.parent / f"colour-{work.name}"
    code = main(["colorize", "--model", str(work / "runs" / run_name), str(photo_dataset / "val" / "v0.png"),
                 "--out", str(out), "--device", "cpu", "-q"])
    assert code == 0 and (out / "v0.png").is_file(), capsys.readouterr().err


def test_a_moved_then_copied_work_folder_keeps_its_runs_usable(work, photo_dataset, ran, capsys,
                                                               one_torch_thread):
    build(tasks.TrainFCN32s(config=CFG, overrides=OVER, dataset=str(photo_dataset)))
    run_name = tasks.TrainFCN32s(config=CFG, overrides=OVER, dataset=str(photo_dataset)).run_dir().name

    moved = work.parent / "work2"
    shutil.move(work, moved)                                     # mv work work2
    _evaluate_and_colorize(moved, photo_dataset, run_name, ran, capsys, 0.38)

    copy = work.parent / "work3"
    shutil.copytree(moved, copy, symlinks=True)                  # cp -r work2 work3, then the original goes
    shutil.rmtree(moved)
    _evaluate_and_colorize(copy, photo_dataset, run_name, ran, capsys, 0.5)
    assert _json_files_naming(copy, work) == [] and _json_files_naming(copy, moved) == []
    record = json.loads((copy / "runs" / run_name / "inputs.json").read_text())
    assert all(p.startswith(("../../lab/", "../../labels/")) for pair in record["train"] + record["val"]
               for p in pair), record["train"]


def test_run_inputs_paths_inside_the_work_folder_are_relative_and_old_absolute_ones_are_rebased(tmp_path):
    old = tmp_path / "old"
    run = old / "runs" / "fcn16s-c1-abc"
    for rel in ("lab/s32/a.h5", "labels/x/s32/a.h5", "runs/fcn32s-c1-def/best.pt"):
        (old / rel).parent.mkdir(parents=True, exist_ok=True)
        (old / rel).write_bytes(b"x")
    outside = tmp_path / "elsewhere" / "b.h5"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    inputs = RunInputs(arch="fcn16s", cfg={"n_clusters": 2}, train=[(old / "lab/s32/a.h5", old / "labels/x/s32/a.h5")],
                       val=[(outside, outside)], mean_L=50.0, gmm={}, init_checkpoint=str(old / "runs/fcn32s-c1-def/best.pt"))
    run.mkdir(parents=True)
    inputs.save(run)
    stored = json.loads((run / "inputs.json").read_text())
    assert stored["train"] == [["../../lab/s32/a.h5", "../../labels/x/s32/a.h5"]]
    assert stored["val"] == [[str(outside), str(outside)]] and stored["init_checkpoint"] == "../fcn32s-c1-def/best.pt"
    new = tmp_path / "new"
    shutil.move(old, new)
    loaded = RunInputs.load(new / "runs" / run.name)
    assert loaded.train == [(str(new / "lab/s32/a.h5"), str(new / "labels/x/s32/a.h5"))]
    assert loaded.val == [(str(outside), str(outside))]
    assert loaded.init_checkpoint == str(new / "runs/fcn32s-c1-def/best.pt")
    # an inputs.json written before (absolute paths into the old place): rebased where this work folder has the file
    run = new / "runs" / run.name
    assert resolve_path(str(old / "lab/s32/a.h5"), run) == str(new / "lab/s32/a.h5")
    assert resolve_path(str(old / "lab/s32/gone.h5"), run) == str(old / "lab/s32/gone.h5")
    assert portable_path(outside, run) == str(outside)
