"""A central scheduler: a real luigid on loopback, and two `luigi` processes that run
two experiments sharing their label shards at the same time (docs/distributed.md "Many workers
and machines").  Every shared artifact must be built exactly once, by one of them."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import luigi
import pytest

import tasks

REPO = Path(__file__).resolve().parents[1]
SHARED = ("LabShard", "LabSplit", "FitGMM", "MeanLightness", "LabelShard", "LabelSplit")
# Short trainings: the point is the scheduling, not the model (config 102 = tiny test config).
TRAIN = {"max_iteration": 4, "interval_validate": 2}


def _luigid():
    exe = Path(sys.executable).with_name("luigid")
    return str(exe) if exe.exists() else shutil.which("luigid")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set:
    """Local addresses of the TCP sockets listening on `port` (Linux /proc; empty elsewhere)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


@pytest.fixture
def luigid(tmp_path):
    """A luigid bound to 127.0.0.1 on a free port, run from the repo (so it reads luigi.cfg's
    [resources]) with its log and state in tmp; yields the port, stopped afterwards."""
    if _luigid() is None:
        pytest.skip("luigid not installed")
    port = _free_port()
    logdir = tmp_path / "luigid"
    logdir.mkdir()
    out = open(logdir / "stdout", "w")
    proc = subprocess.Popen([_luigid(), "--address", "127.0.0.1", "--port", str(port),
                             "--logdir", str(logdir), "--state-path", str(tmp_path / "luigid.state")],
                            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("luigid did not start: " + (logdir / "stdout").read_text()[-2000:])
                time.sleep(0.2)
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()


def _scheduler_env(tmp_path):
    """luigi.cfg says local_scheduler = true and luigi has no flag to turn it off:
    an overlay config read last (LUIGI_CONFIG_PATH) does.  One torch thread per process:
    on a shared, busy CPU, torch's default threads spin against each other (~20x slower)."""
    overlay = tmp_path / "central.cfg"
    overlay.write_text("[core]\nlocal_scheduler = false\n")
    return {**os.environ, "LUIGI_CONFIG_PATH": str(overlay), "OMP_NUM_THREADS": "1",
            "COLORIZE_DEBUG": "1"}    # Luigi's "running"/"done" lines on stderr, counted below


def _api(port, method, **data):
    url = f"http://127.0.0.1:{port}/api/{method}?data=" + urllib.request.quote(json.dumps(data))
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["response"]


def _runs(log: str, verb: str) -> Counter:
    """task repr -> how many times this log says the task was `verb` ('running' / 'done')."""
    return Counter(m.group(1) for m in re.finditer(rf"\) {verb} +([A-Za-z0-9]+\(.*\))\s*$", log, re.M))


def test_luigid_on_loopback_two_experiments_share_their_shards_built_once(luigid, work, tmp_path,
                                                                          photo_dataset):
    port = luigid
    listening = _listening_addresses(port)
    if listening:                                       # no authentication: loopback only
        assert listening == {"0100007F"}, listening
    base = [sys.executable, "-m", "luigi", "--module", "tasks", "TrainFCN32s", "--config", "102",
            "--dataset", str(photo_dataset), "--workers", "2",
            "--scheduler-host", "127.0.0.1", "--scheduler-port", str(port),
                    "--worker-keep-alive", "--worker-wait-interval", "0.5", "--worker-wait-jitter", "0.5",
            "--colorize-work-dir", str(work), "--colorize-loader-workers", "0", "--colorize-device", "cpu"]
    experiments = [TRAIN, {**TRAIN, "lr": 0.001}]
    env = _scheduler_env(tmp_path)
    procs = []
    try:
        for i, overrides in enumerate(experiments):
            err = open(tmp_path / f"exp{i}.log", "w+")
            procs.append((subprocess.Popen(base + ["--overrides", json.dumps(overrides)], cwd=REPO, env=env,
                                           stdout=subprocess.DEVNULL, stderr=err, start_new_session=True), err))
        for proc, _ in procs:
            proc.wait(timeout=240)
    finally:
        for proc, err in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            err.close()
    logs = [(tmp_path / f"exp{i}.log").read_text() for i in range(len(experiments))]
    for (proc, _), log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]

    # both experiments finished (the `work` fixture points this process at the same work_dir)
    luigi.task_register.Register.clear_instance_cache()
    run_dirs = [tasks.TrainFCN32s(config=102, overrides=o, dataset=str(photo_dataset)).run_dir()
                for o in experiments]
    n_shards = sum(len(tasks.LabSplit(dataset=str(photo_dataset), im_size=32, split=s, shard_size=4).plans)
                   for s in ("train", "val"))
    assert run_dirs[0] != run_dirs[1]
    for run in run_dirs:
        assert json.loads((run / "done.json").read_text())["complete"]

    # every shared task ran exactly once, in one process or the other
    running = sum((_runs(log, "running") for log in logs), Counter())
    done = sum((_runs(log, "done") for log in logs), Counter())
    assert running == done
    for family in SHARED:
        ran = {task: n for task, n in running.items() if task.startswith(family + "(")}
        assert ran and set(ran.values()) == {1}, (family, ran)
    families = Counter(task.split("(")[0] for task in running)
    assert families["LabShard"] == families["LabelShard"] == n_shards >= 4
    assert families["FitGMM"] == families["MeanLightness"] == 1
    assert families["LabSplit"] == families["LabelSplit"] == 2 and families["TrainFCN32s"] == 2
    assert len(list((work / "lab").rglob("*.h5"))) == n_shards      # and nothing was built twice on disk

    # both processes used this scheduler, and its one "gpu" (luigid's [resources]) ran the
    # two trainings one after the other
    trained = _api(port, "task_list", status="DONE", upstream_status="", search="TrainFCN32s")
    assert sorted(t["name"] for t in trained.values()) == ["TrainFCN32s", "TrainFCN32s"]
    spans = sorted(((r / "config.json").stat().st_mtime, (r / "done.json").stat().st_mtime) for r in run_dirs)
    assert spans[0][1] <= spans[1][0], spans


def test_training_resource_name_comes_from_luigi_cfg():
    """[colorize] gpu_resource names the [resources] unit a training task takes: per-host
    names (gpu_host1 = 1, ...) in luigid's config let it schedule one run per GPU host."""
    cfg = luigi.configuration.get_config()
    saved = cfg.get("colorize", "gpu_resource", None)
    try:
        cfg.set("colorize", "gpu_resource", "gpu")
        assert tasks.TrainFCN32s(config=102).process_resources() == {"gpu": 1}
        cfg.set("colorize", "gpu_resource", "gpu_host1")
        assert tasks.TrainFCN16s(config=102).process_resources() == {"gpu_host1": 1}
        assert tasks.LabShard(batch="x", shards=["x"], files=[[]]).process_resources() == {}
    finally:
        if saved is None:
            cfg.remove_option("colorize", "gpu_resource")
        else:
            cfg.set("colorize", "gpu_resource", saved)
