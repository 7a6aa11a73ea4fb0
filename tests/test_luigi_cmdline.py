"""The `luigi` command line's own mistakes are one line each with README's exit code, never a
traceback (pipeline/luigi_cmdline.py); the project's `luigi` implies --module tasks."""
import subprocess
import sys
from pathlib import Path

from pipeline import luigi_logging
from pipeline.luigi_cmdline import work_dir_on_command_line

REPO = Path(__file__).resolve().parents[1]
PROJECT_LUIGI = [sys.executable, "-m", "pipeline.luigi_cmdline"]      # pyproject's `luigi` script
LUIGI = [sys.executable, "-m", "luigi"]                                # Luigi's own


def _run_all(cmds, work):
    procs = [subprocess.Popen([*cmd, "--colorize-work-dir", str(work)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
             for cmd in cmds]
    return [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]


def test_command_line_mistakes_are_one_line_each_with_their_exit_code(tmp_path):
    work = tmp_path / "work"
    misspelled, no_module_misspelled, no_task, bad_choice, bad_int, bad_global, no_module_help = _run_all([
        [*LUIGI, "--module", "tasks", "TrainFCN16x", "--config", "101"],
        [*PROJECT_LUIGI, "TrainFCN16x", "--config", "101"],
        [*PROJECT_LUIGI],
        [*LUIGI, "--module", "tasks", "Evaluate", "--config", "101", "--arch", "fcn16"],
        [*LUIGI, "--module", "tasks", "LabShard", "--im-size", "abc"],
        [*PROJECT_LUIGI, "Evaluate", "--config", "101", "--colorize-loader-workers", "two"],
        [*PROJECT_LUIGI, "TrainFCN16s", "--help"],
    ], work)
    for code, _, stderr in (misspelled, no_module_misspelled):
        assert code == 2, stderr
        [line] = stderr.splitlines()
        assert line.startswith("colorize-fcn: error: no task TrainFCN16x; did you mean TrainFCN16s, "), line
        assert "LabParams" not in line and "Evaluate" in line         # runnable tasks, not their bases
    code, _, stderr = no_task
    assert code == 2 and stderr.startswith("colorize-fcn: error: no task specified: luigi TASK"), stderr
    assert len(stderr.splitlines()) == 1
    expected = {
        "bad_choice": "colorize-fcn: error: Evaluate: ValueError: --arch: fcn16 is not a valid choice from {",
        "bad_int": "colorize-fcn: error: LabShard: ValueError: --im-size: invalid literal for int() with base 10: 'abc'",
        "bad_global": "colorize-fcn: error: Evaluate: ValueError: --colorize-loader-workers: invalid literal for int()",
    }
    for (code, _, stderr), (name, start) in zip((bad_choice, bad_int, bad_global), expected.items()):
        assert code == 35, (name, stderr)
        [line] = stderr.splitlines()
        assert line.startswith(start), (name, line)
    code, stdout, stderr = no_module_help                # no --module: the project's luigi loads tasks
    assert code == 0 and "--config CONFIG" in stdout and "--overrides" in stdout, stdout + stderr
    assert not work.exists()                             # nothing written, not even a log


def test_a_command_line_that_failed_to_parse_logs_under_its_work_dir(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    argv = ["luigi", "--module", "tasks", "Evaluate", "--colorize-work-dir", str(other), "--config", "101"]
    monkeypatch.setattr(sys, "argv", argv)
    assert luigi_logging._work_dir() == other             # Luigi's parser is gone by then
    assert work_dir_on_command_line(["Demo", f"--colorize-work-dir={other}"]) == str(other)
    assert work_dir_on_command_line(["Demo"]) is None
    assert work_dir_on_command_line(["Demo", "--colorize-work-dir"]) is None


def test_docs_say_once_how_to_get_the_commands_on_path_and_use_one_form():
    readme = (REPO / "README.md").read_text()
    assert readme.index("source .venv/bin/activate") < readme.index("## Quick start")
    texts = {p: p.read_text() for p in [REPO / "README.md", REPO / "bench" / "README.md",
                                         *(REPO / "docs").glob("*.md"), REPO / "inference" / "demo.py"]}
    for path, text in texts.items():
        for command in ("luigi", "colorize-fcn", "python", "tensorboard", "torchrun", "luigid"):
            assert f".venv/bin/{command} " not in text, (path, command)     # the bare name, after activate


def test_the_installed_luigi_is_the_projects():
    """pip installs it over Luigi's own script (checked: a venv with luigi 3.8.1, then
    `pip install -e .`, has bin/luigi calling pipeline.luigi_cmdline.main)."""
    import tomllib
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["luigi"] == "pipeline.luigi_cmdline:main"


def test_a_reader_that_goes_away_does_not_fail_the_work(tmp_path, photo_dataset):
    """`luigi ... | head -1`: the console's pipe closes after one line.  Progress lines, log
    records and training's own lines must not fail the tasks (they did: BrokenPipeError, exit
    40); the work finishes, exit 0, and the log file has no error.  (Training's lines go through
    the same writer, pipeline.progress.say, as PrepareRun's [prepare] line.)"""
    work = tmp_path / "work"
    proc = subprocess.Popen([*LUIGI, "--module", "tasks", "PrepareRun", "--config", "102", "--dataset",
                             str(photo_dataset), "--colorize-work-dir", str(work), "--colorize-device", "cpu",
                             "--colorize-loader-workers", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                                           "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline()                       # one line read, then the reader goes away
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert len(list(work.glob("runs/fcn32s-c102-*/inputs.json"))) == 1
    [log] = list((work / "logs").glob("luigi-*.log"))
    assert "Error" not in log.read_text()
