"""`colorize-fcn runs` and `colorize-fcn gc` on a real work dir: two finished config-102
runs with different K (so they share Lab shards but not label shards), one evaluated."""
import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import luigi
import pytest

import tasks
from conftest import build, write_photo
from inference.caches import execute, plan_gc
from inference.disk import human_size
from inference.cli import main
from inference.runs import list_runs

ROOT = Path(__file__).resolve().parents[1]
OLD = {"max_iteration": 4, "interval_validate": 2}          # K = 4 (config 102's)
NEW = dict(OLD, n_clusters=5)


@contextlib.contextmanager
def luigi_settings(**values):
    cfg = luigi.configuration.get_config()
    saved = {k: cfg.get("colorize", k, None) for k in values}
    for k, v in values.items():
        cfg.set("colorize", k, str(v))
    try:
        yield
    finally:
        for k, v in saved.items():
            cfg.remove_option("colorize", k) if v is None else cfg.set("colorize", k, v)


def train(overrides, dataset):
    return tasks.TrainFCN32s(config=102, overrides=overrides, dataset=str(dataset))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(work dir, dataset, old run folder, new run folder), built once; tests that delete
    work on a copy (copy_work)."""
    base = tmp_path_factory.mktemp("runsgc")
    dataset, work = base / "photos", base / "work"
    names = {"train": [f"train/p{i:02d}.png" for i in range(8)], "val": [f"val/v{i}.png" for i in range(3)]}
    for i, rp in enumerate(names["train"] + names["val"]):
        write_photo(dataset / rp, seed=i)
    for split, files in names.items():
        (dataset / f"files_{split}.txt").write_text("\n".join(files) + "\n")
    with luigi_settings(work_dir=work, loader_workers=0, device="cpu"):
        build(train(OLD, dataset))
        build(train(NEW, dataset))
        build(tasks.Evaluate(config=102, overrides=NEW, dataset=str(dataset), arch="fcn32s", gallery=1))
        old, new = train(OLD, dataset).run_dir(), train(NEW, dataset).run_dir()
    return work, dataset, old, new


@pytest.fixture
def copy_work(built, work):
    """The built work dir copied to this test's `work` (luigi.cfg points there)."""
    shutil.copytree(built[0], work)
    return work


def files_under(folder) -> set:
    return {p.relative_to(folder) for p in Path(folder).rglob("*") if p.is_file()}


def label_dir(run) -> Path:
    """The label setting folder of a run's shards (labels/<setting>/), from its inputs.json."""
    from pipeline.run_inputs import RunInputs
    label = Path(RunInputs.load(run).train[0][1])                 # stored relative to the run folder
    return label.parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "inference", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


# ----------------------------------------------------------------------------- runs
def test_runs_rows_and_json(built):
    work, dataset, old, new = built
    rows = {r["run"]: r for r in list_runs(work)}
    assert set(rows) == {old.name, new.name}
    r = rows[new.name]
    assert (r["arch"], r["config"], r["overrides"], r["dataset"]) == ("fcn32s", 102, NEW, str(dataset.resolve()))
    done = json.loads((new / "done.json").read_text())
    assert (r["iterations"], r["max_iteration"], r["finished"], r["state"]) == (4, 4, True, "finished")
    assert (r["best_val_loss"], r["best_iteration"]) == (done["best_val_loss"], done["best_iteration"])
    metrics = json.loads(next(new.glob("eval-*/metrics.json")).read_text())
    assert r["auc"] == metrics["methods"]["model/annealed"]["auc"] and 0 < r["auc"] <= 100
    assert rows[old.name]["overrides"] == OLD and rows[old.name]["auc"] is None

    out = cli("runs", "--work-dir", work)
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines()
    assert header.split()[:3] == ["ARCH", "CONFIG", "OVERRIDES"] and len(lines) == 2
    line = next(x for x in lines if x.endswith(new.name))
    assert line.split()[:2] == ["fcn32s", "102"] and json.loads(line.split()[2]) == NEW
    assert "4/4" in line and f"{done['best_val_loss']:.4f} @{done['best_iteration']}" in line
    assert f"{r['auc']:.2f}" in line and "finished" in line
    as_json = json.loads(cli("runs", "--work-dir", work, "--json").stdout)
    assert [x["run"] for x in as_json] == sorted([old.name, new.name])
    assert as_json[1 if new.name > old.name else 0]["overrides"] == NEW


def test_the_default_work_dir_is_luigi_cfgs(built, tmp_path):
    (tmp_path / "luigi.cfg").write_text(f"[colorize]\nwork_dir = {built[0]}\n")
    out = subprocess.run([sys.executable, "-m", "inference", "runs", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert sorted(r["run"] for r in json.loads(out.stdout)) == sorted([built[2].name, built[3].name])


def test_runs_of_an_unfinished_run_come_from_log_csv(copy_work, built):
    old = copy_work / "runs" / built[2].name
    (old / "done.json").unlink()
    row = next(r for r in list_runs(copy_work) if r["run"] == old.name)
    valid = [ln.split(",") for ln in (old / "log.csv").read_text().splitlines()[1:] if ",valid," in ln]
    best = min(valid, key=lambda c: float(c[3]))
    assert (row["state"], row["finished"], row["iterations"]) == ("stopped", False, 4)
    assert (row["best_val_loss"], row["best_iteration"]) == (float(best[3]), int(best[0]))
    # training rows after the last validation (killed between two): a rerun resumes at 4
    header, *lines = (old / "log.csv").read_text().splitlines()
    train_row = next(ln for ln in lines if ",train," in ln).split(",")
    train_row[0] = "6"
    (old / "log.csv").write_text("\n".join([header, *lines, ",".join(train_row)]) + "\n")
    row = next(r for r in list_runs(copy_work) if r["run"] == old.name)
    assert (row["state"], row["iterations"]) == ("stopped", 4)


def test_runs_does_not_import_torch(built):
    code = ("import sys; from inference.cli import main; main(['runs', '--work-dir', sys.argv[1]]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(built[0])], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.splitlines()[-1] == "False", out.stderr


# ----------------------------------------------------------------------------- gc
def test_gc_dry_run_lists_the_unused_label_shards_with_sizes_and_deletes_nothing(built):
    work, _, old, new = built
    before = files_under(work)
    out = cli("gc", "--work-dir", work, "--dry-run", "--min-age", "0", "--run", new.name, "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    old_labels = label_dir(old).relative_to(work)
    gmm = next((work / "gmm").glob("*/soft-k4-*.npz")).relative_to(work)
    assert sorted(i["path"] for i in plan["delete"]) == sorted([f"{old_labels}/", str(gmm)])
    item = next(i for i in plan["delete"] if i["path"] == f"{old_labels}/")
    shards = [p for p in (work / old_labels).rglob("*") if p.is_file()]
    assert any(p.suffix == ".h5" for p in shards)
    assert (item["files"], item["size"]) == (len(shards), sum(p.stat().st_size for p in shards))
    assert plan["kept_runs"] == [new.name] and plan["dry_run"]
    text = cli("gc", "--work-dir", work, "--dry-run", "--min-age", "0", "--run", new.name).stdout
    assert "would delete" in text and f"{old_labels}/" in text and "would free" in text
    assert files_under(work) == before


def test_gc_without_a_selection_keeps_what_every_run_uses(built):
    plan = plan_gc(built[0], min_age_s=0)
    assert plan.delete == [] and sorted(plan.kept_runs) == sorted([built[2].name, built[3].name])


def test_gc_deletes_exactly_the_unused_caches_and_the_kept_run_needs_nothing(copy_work, built, ran):
    work, dataset, old, new = copy_work, built[1], built[2], built[3]
    before = files_under(work)
    old_labels, gmm = label_dir(old).relative_to(built[0]), next((work / "gmm").glob("*/soft-k4-*.npz"))
    doomed = {p for p in before if old_labels in p.parents} | {gmm.relative_to(work)}
    assert main(["gc", "--work-dir", str(work), "--min-age", "0", "--run", new.name]) == 0
    assert files_under(work) == before - doomed
    assert not (work / old_labels).exists() and not list(work.rglob(".*.tmp-*"))
    assert (work / "runs" / old.name / "best.pt").exists()         # the run itself stays
    ran.clear()
    build(tasks.PrepareRun(config=102, overrides=NEW, dataset=str(dataset)), train(NEW, dataset))
    assert ran.families() == []
    build(tasks.PrepareRun(config=102, overrides=OLD, dataset=str(dataset)))    # rebuilt on demand
    assert ran.count("LabelShard") >= 3 and ran.count("FitGMM") == 1 and ran.count("LabShard") == 0


def test_runs_are_deleted_only_with_the_flag(copy_work, built):
    work, old, new = copy_work, built[2].name, built[3].name
    assert main(["gc", "--work-dir", str(work), "--min-age", "0", "--config", "102"]) == 0
    assert {p.name for p in (work / "runs").iterdir()} == {old, new}
    assert main(["gc", "--work-dir", str(work), "--min-age", "0", "--run", new]) == 0
    assert {p.name for p in (work / "runs").iterdir()} == {old, new}
    assert main(["gc", "--work-dir", str(work), "--min-age", "0", "--run", new, "--delete-runs"]) == 0
    assert {p.name for p in (work / "runs").iterdir()} == {new}


def test_unfinished_runs_keep_their_caches(copy_work, built):
    (copy_work / "runs" / built[2].name / "done.json").unlink()
    plan = plan_gc(copy_work, runs=[built[3].name], min_age_s=0)
    assert plan.delete == [] and plan.kept_runs == sorted([built[2].name, built[3].name])


def test_what_is_in_use_is_never_deleted(copy_work, built):
    work, old, new = copy_work, copy_work / "runs" / built[2].name, built[3].name
    old_labels = label_dir(built[2]).relative_to(built[0])
    fd = os.open(old / ".lock", os.O_RDWR | os.O_CREAT)               # pipeline/runlock.py's lock
    os.write(fd, json.dumps({"host": "h", "pid": 1, "started": "now"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        row = next(r for r in list_runs(work) if r["run"] == old.name)
        assert row["state"] == "finished" and row["locked_by"] == "h:1 (since now)"
        plan = plan_gc(work, runs=[new], delete_runs=True, min_age_s=0)
        assert plan.delete == [] and old.name in plan.kept_runs     # the run and its caches
    finally:
        os.close(fd)                                                    # the flock goes with it
    assert plan_gc(work, runs=[new], delete_runs=True, min_age_s=0).delete        # free now
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = work / old_labels / "s32" / f".x.h5.tmp-{socket.gethostname()}-{writer.pid}-0123abcd"
    try:
        live.write_bytes(b"")
        plan = plan_gc(work, runs=[new], min_age_s=0)
        assert [b["path"] for b in plan.busy] == [f"{old_labels}/"]
        assert not any(i.path.startswith(str(old_labels)) for i in plan.delete)
    finally:
        writer.kill()
        writer.wait()
    dead = plan_gc(work, runs=[new], min_age_s=0)                       # a dead writer's leftover
    assert f"{old_labels}/" in [i.path for i in dead.delete] and not dead.busy
    young = plan_gc(work, runs=[new], min_age_s=3600)
    assert young.delete == [] and young.busy


def test_a_folder_taken_into_use_after_planning_is_not_deleted(copy_work, built):
    old_labels = copy_work / label_dir(built[2]).relative_to(built[0])
    plan = plan_gc(copy_work, runs=[built[3].name], min_age_s=0)
    assert f"{old_labels.relative_to(copy_work)}/" in [i.path for i in plan.delete]
    live = old_labels / "s32" / f".y.h5.tmp-{socket.gethostname()}-{os.getpid()}-0123abcd"
    live.write_bytes(b"")                   # a writer (this process) starts there
    errors = execute(plan)
    assert len(errors) == 1 and errors[0].endswith("in use: being written (" + live.name + ")") and live.exists()
    assert not list((copy_work / "gmm").glob("*/soft-k4-*.npz"))      # the rest went


def test_a_killed_gc_leaves_garbage_the_next_gc_removes(copy_work, built):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = copy_work / "labels" / f".soft-k9-lp8-gx.tmp-{host}-{gone.pid}-0123abcd"
    live = copy_work / "labels" / f".soft-k8-lp8-gx.tmp-{host}-{os.getpid()}-0123abcd"
    for trash in (dead, live):
        (trash / "s32").mkdir(parents=True)
        (trash / "s32" / "a.h5").write_bytes(b"x" * 10)
    plan = plan_gc(copy_work, min_age_s=0)
    assert [(i.path, i.kind, i.size) for i in plan.delete] == [
        (f"{dead.relative_to(copy_work)}/", "dead writer's temporary", 10)]
    assert execute(plan) == [] and not dead.exists() and live.exists()


def test_keep_path_keeps_a_folder(built):
    work, old_labels = built[0], label_dir(built[2])
    for keep in (old_labels, old_labels.relative_to(work)):       # absolute, or relative to work
        plan = plan_gc(work, runs=[built[3].name], keep_paths=[keep], min_age_s=0)
        assert plan.delete == [] and plan.warnings == []
    plan = plan_gc(work, runs=[built[3].name], keep_paths=["/nowhere/labels/x"], min_age_s=0)
    assert len(plan.delete) == 2 and "--keep /nowhere/labels/x: no such file" in plan.warnings[0]


def test_gc_exit_codes(built, tmp_path):
    work = built[0]
    assert cli("gc", "--work-dir", tmp_path / "nope", "--dry-run").returncode == 2
    bad = cli("gc", "--work-dir", work, "--dry-run", "--config", "7")
    assert bad.returncode == 2 and "no run under" in bad.stderr and "nothing deleted" in bad.stderr
    assert cli("gc", "--work-dir", work, "--delete-runs").returncode == 2
    assert cli("gc", "--work-dir", work, "--run", "fcn32s-c1-nope").returncode == 2
    assert cli("gc", "--work-dir", work, "--min-age", "x").returncode == 2
    assert cli("runs", "--work-dir", tmp_path / "nope").returncode == 2
    assert cli("gc", "--work-dir", work, "--dry-run").returncode == 0


@pytest.mark.parametrize("value, says", [("-5", "must be >= 0 minutes, got -5"), ("abc", "not a number of minutes")])
def test_gc_refuses_a_bad_min_age(tmp_path, value, says):
    out = cli("gc", "--work-dir", tmp_path, "--min-age", value, "--dry-run")
    assert out.returncode == 2 and says in out.stderr, out.stderr


# ----------------------------------------------------------------------------- disk use
def _hold_run_lock(run: Path) -> int:
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)               # pipeline/runlock.py's lock
    os.write(fd, json.dumps({"host": "h", "pid": 1, "started": "now"}).encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_runs_show_sizes_and_gc_prunes_resume_checkpoints_of_finished_runs_only(copy_work, built):
    work, new = copy_work, copy_work / "runs" / built[3].name
    stopped = work / "runs" / "fcn32s-c102-stopped"
    shutil.copytree(new, stopped)
    (stopped / "done.json").unlink()                                      # unfinished: resumes from them
    ckpts = [new / n for n in ("checkpoint.pt", "checkpoint.prev.pt") if (new / n).exists()]
    assert new / "checkpoint.pt" in ckpts
    rows = {r["run"]: r for r in list_runs(work)}
    on_disk = sum(p.stat().st_size for p in new.rglob("*") if p.is_file())
    assert rows[new.name]["size_bytes"] == on_disk > 0
    assert rows[new.name]["resume_checkpoint_bytes"] == sum(p.stat().st_size for p in ckpts)
    out = cli("runs", "--work-dir", work)
    assert out.stdout.splitlines()[0].split()[-2:] == ["SIZE", "RUN"]
    line = next(x for x in out.stdout.splitlines() if x.endswith(new.name))
    assert line.split()[-3:-1] == human_size(on_disk).split(), line

    dry = cli("gc", "--work-dir", work, "--checkpoints", "--dry-run", "--min-age", "0")
    assert dry.returncode == 0, dry.stderr
    listed = [x.split()[4] for x in dry.stdout.splitlines() if "resume checkpoint of a finished run" in x]
    old = work / "runs" / built[2].name                                   # the other finished run
    old_ckpts = [old / n for n in ("checkpoint.pt", "checkpoint.prev.pt") if (old / n).exists()]
    assert sorted(listed) == sorted(str(p.relative_to(work)) for p in ckpts + old_ckpts)
    assert all(p.exists() for p in ckpts)                                 # a dry run deletes nothing
    assert "resume checkpoint" not in cli("gc", "--work-dir", work, "--dry-run", "--min-age", "0").stdout

    fd = _hold_run_lock(new)                                              # a running run: never touched
    try:
        plan = plan_gc(work, checkpoints=True, min_age_s=0)
        assert not [i for i in plan.delete if i.path.startswith(f"runs/{new.name}/")]
        assert [i for i in plan.delete if i.path.startswith(f"runs/{old.name}/")]      # finished, free
        assert {"path": f"runs/{new.name}/", "reason": "in use: locked by h:1 (since now)"} in plan.busy
    finally:
        os.close(fd)
    plan = plan_gc(work, checkpoints=True, min_age_s=0)
    fd = _hold_run_lock(new)                                              # locked after planning
    try:
        errors = execute(plan)
        assert len(errors) == len(ckpts) and all(e.endswith("in use: locked by h:1 (since now)") for e in errors), "\n".join(errors)
        assert all(p.exists() for p in ckpts)
    finally:
        os.close(fd)
    assert execute(plan_gc(work, checkpoints=True, min_age_s=0)) == []
    assert not any(p.exists() for p in ckpts) and (new / "best.pt").exists()
    assert (stopped / "checkpoint.pt").exists()
    row = next(r for r in list_runs(work) if r["run"] == new.name)
    now_on_disk = sum(p.stat().st_size for p in new.rglob("*") if p.is_file())
    assert row["size_bytes"] == now_on_disk <= on_disk - rows[new.name]["resume_checkpoint_bytes"] + 100   # + .lock's line
    assert row["state"] == "finished" and row["resume_checkpoint_bytes"] == 0


def test_gc_says_why_each_folder_is_kept_and_keeps_what_a_live_build_wrote(copy_work, built):
    work, new = copy_work, built[3].name
    old_labels = label_dir(built[2]).relative_to(built[0])
    for p in work.rglob("*"):
        os.utime(p, (1e9, 1e9), follow_symlinks=False)                   # every cache old
    young = plan_gc(work, runs=[new], min_age_s=3600, now=1e9 + 60)
    assert young.delete == [] and young.busy
    assert all(b["reason"].startswith("recent: ") and "younger than --min-age 1h" in b["reason"]
               for b in young.busy), young.busy
    build = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # a `luigi` build
    marker = work / "logs" / f"building-{socket.gethostname()}-{build.pid}"     # pipeline/builds.py
    try:
        marker.parent.mkdir(exist_ok=True)
        marker.write_text("")
        fresh = work / old_labels / "s32" / "fresh.h5"                   # what it wrote since it started
        fresh.write_bytes(b"x")
        plan = plan_gc(work, runs=[new], min_age_s=0)
        [kept] = plan.busy
        assert kept["path"] == f"{old_labels}/" and kept["reason"].startswith(
            f"being built: s32/fresh.h5 written since the live build {socket.gethostname()}:{build.pid} started ")
        assert kept["reason"].endswith(f"(logs/{marker.name})")
        assert not any(i.path.startswith(str(old_labels)) for i in plan.delete)
        assert plan.delete                                                 # older caches go
        out = cli("gc", "--work-dir", work, "--run", new, "--dry-run", "--min-age", "0")
        assert f"kept: {old_labels}/  (being built: s32/fresh.h5 written since the live build" in out.stdout
        assert "in use" not in out.stdout
    finally:
        build.kill()
        build.wait()
    after = plan_gc(work, runs=[new], min_age_s=0)                       # the build has ended
    assert f"{old_labels}/" in [i.path for i in after.delete] and not after.busy


def test_runs_say_when_a_run_validates_on_its_training_photos(tmp_path):
    for name, val in (("fcn32s-c101-a", "train"), ("fcn32s-c14-b", "small")):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"arch": "fcn32s", "cfg": {
            "config": 101, "train_split": "train", "val_split": val, "max_iteration": 300}}))
        (run / "log.csv").write_text("iteration,epoch,split,loss,acc,acc_cls,mean_iu,fwavacc,lr,elapsed_s,data_split\n"
                                     f"50,0,valid,0.52276065,0.1,0.1,0.1,0.1,0.001,9.0,{val}\n")
    rows = {r["run"]: r for r in list_runs(tmp_path)}
    assert (rows["fcn32s-c101-a"]["val_split"], rows["fcn32s-c101-a"]["validates_on_train"]) == ("train", True)
    assert rows["fcn32s-c14-b"]["validates_on_train"] is False
    out = cli("runs", "--work-dir", tmp_path).stdout.splitlines()
    assert "BEST VAL @ITER ON SPLIT" in out[0]
    assert "0.5228 @50 on train=train!" in out[1] and "0.5228 @50 on small " in out[2], out
