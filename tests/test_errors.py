"""Expected failures through the `luigi` command, as users meet them: the exit code, one
line per failed task and a closing line naming the log file on the console, no traceback
there (the log file has it), and nothing built first.  README "Set-up"."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("COLORIZE_DEBUG", None)
MAX_LINES = 15           # error lines + Luigi's run summary (~10 lines) + the closing line
FULL_LOG = re.compile(r"tracebacks and the full log: (\S+)")


def _luigi(task, *args, work, dataset):
    return [sys.executable, "-m", "luigi", "--module", "tasks", task, "--config", "102",
            "--dataset", str(dataset), "--colorize-work-dir", str(work), *args]


def _run_all(cmds, env=ENV):
    """Run the commands at once (each is mostly start-up); [(exit code, stderr)]."""
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for cmd in cmds]
    results = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        results.append((proc.returncode, stderr))
    return results


def _log_file(stderr) -> Path:
    """The log file the closing line names."""
    found = FULL_LOG.search(stderr.strip().splitlines()[-1])
    assert found, stderr
    return Path(found.group(1))


@pytest.mark.parametrize("overrides, says", [
    ("{lr: 1e-5}", "overrides '{lr: 1e-5}' are not valid JSON"),
    ("[1, 2]", "overrides must be a JSON object"),
    ('{"lr": -1}', "overrides: lr must be a number in (0, 1], got -1"),
    ('{"img_lowpass": 0}', "overrides: img_lowpass must be an integer in [1, 64], got 0"),
])
def test_a_bad_overrides_value_is_one_line_and_exit_35_before_anything_is_written(
        tmp_path, photo_dataset, overrides, says):
    work = tmp_path / "work"
    [(code, stderr)] = _run_all([_luigi("PrepareRun", "--overrides", overrides, work=work, dataset=photo_dataset)])
    assert code == 35, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"colorize-fcn: error: PrepareRun: ConfigError: {says}"), line
    assert not work.exists()


@pytest.mark.parametrize("number, says", [
    ("abc", "--config must be a config number, got 'abc'"),
    ("999", "unknown config 999; valid configs: [7, 14"),
])
def test_a_bad_config_number_is_one_line_and_exit_35_before_anything_is_written(
        tmp_path, photo_dataset, number, says):
    work = tmp_path / "work"
    cmd = _luigi("TrainFCN16s", "--config", number, work=work, dataset=photo_dataset)
    [(code, stderr)] = _run_all([cmd])
    assert code == 35, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"colorize-fcn: error: TrainFCN16s: ConfigError: {says}"), line
    assert not work.exists()


def test_dataset_errors_are_one_line_each_exit_35_and_the_log_has_the_traceback(tmp_path):
    """Errors found while scheduling: a missing dataset, an empty split list.  (An unknown config
    number is refused earlier, while the command line is parsed: the test above; so are keys
    that do not fit together and what cannot fit in memory: tests/test_preflight.py.)"""
    empty_split = tmp_path / "empty-split"
    empty_split.mkdir()
    (empty_split / "files_train.txt").write_text("")
    (empty_split / "files_val.txt").write_text("val/v0.png\n")
    cases = [  # (task, extra args, dataset, what the error line says)
        ("PrepareRun", (), tmp_path / "nowhere", f"dataset root does not exist: '{tmp_path / 'nowhere'}'"),
        ("PrepareRun", (), empty_split, f"split 'train' is empty: {empty_split / 'files_train.txt'} lists no "
                                        "images"),
    ]
    works = [tmp_path / f"work{i}" for i in range(len(cases))]
    results = _run_all([_luigi(task, *args, work=work, dataset=dataset)
                        for (task, args, dataset, _), work in zip(cases, works)])
    for (task, _, _, says), work, (code, stderr) in zip(cases, works, results):
        lines = stderr.strip().splitlines()
        assert code == 35 and "Traceback" not in stderr and len(lines) <= MAX_LINES, (task, says, stderr)
        assert [line for line in lines if line.startswith("colorize-fcn: error:")] == [
            line for line in lines if line.startswith(f"colorize-fcn: error: {task}: ") and says in line], stderr
        assert any(says in line for line in lines), (says, stderr)
        assert lines[-1].startswith("colorize-fcn: 1 task could not be scheduled; ")
        log = _log_file(stderr)
        assert log.parent == work / "logs"
        assert "Traceback (most recent call last)" in log.read_text() and says in log.read_text()
        assert {p.relative_to(work).parts[0] for p in work.rglob("*") if p.is_file()} == {"logs"}  # no work


def test_a_split_whose_every_file_is_unusable_fails_at_its_lab_stage_naming_it(tmp_path, photo_dataset):
    """A plain folder's hash split put only a broken file in 'val': every stage ran and training
    then said only "the validation split has no images".  Now the split's Lab stage says which
    split of which dataset, why, and what to do; no run is prepared."""
    (photo_dataset / "val" / "broken.png").write_bytes(b"not an image")
    (photo_dataset / "files_val.txt").write_text("val/broken.png\n")
    work = tmp_path / "work"
    [(code, stderr)] = _run_all([_luigi("PrepareRun", work=work, dataset=photo_dataset)])
    errors = [line for line in stderr.splitlines() if line.startswith("colorize-fcn: error:")]
    assert code == 30 and "Traceback" not in stderr, stderr
    assert errors == [f"colorize-fcn: error: LabSplit: ValueError: split 'val' of {photo_dataset} has no usable "
                      "image: all 1 listed were skipped (undecodable 1); add readable images to it (a plain "
                      "folder's split is a hash of the file name) or choose another split"], stderr
    assert not list(work.glob("runs/*/inputs.json"))


def test_colorize_debug_shows_the_tracebacks_on_the_console(tmp_path, photo_dataset):
    [(code, stderr)] = _run_all([_luigi("PrepareRun", work=tmp_path / "work", dataset=tmp_path / "nowhere")],
                                env={**ENV, "COLORIZE_DEBUG": "1"})
    assert code == 35 and "Traceback (most recent call last)" in stderr
    assert "colorize-fcn: error: PrepareRun: FileNotFoundError: " in stderr and "dataset root does not exist" in stderr


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write to: chmod 555, or as root (where modes do not
    apply) the immutable attribute; skipped where neither works."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            folder.chmod(0o755)
            pytest.skip("running as root and chattr +i is not available: cannot make a read-only folder")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_a_read_only_work_dir_is_one_line_before_any_work(read_only, photo_dataset):
    """Before pipeline.stage.check_work_dir: one error line per shard task, exit 30."""
    [(code, stderr)] = _run_all([_luigi("PrepareRun", work=read_only, dataset=photo_dataset)])
    assert code == 35 and "Traceback" not in stderr, stderr
    [line] = stderr.strip().splitlines()
    assert re.fullmatch(rf"colorize-fcn: error: PrepareRun: ConfigError: work dir {re.escape(str(read_only))} "
                        r"cannot hold outputs: (Permission denied|Operation not permitted) "
                        r"\(--colorize-work-dir or luigi.cfg \[colorize\] work_dir\)", line), line
    assert list(read_only.iterdir()) == []


def test_overrides_are_checked_on_parsing_and_raise_outside_a_command_line():
    """In Python (luigi.build, a config file read there) a bad value is a ConfigError, not an exit."""
    from pipeline.config import ConfigError
    from pipeline.luigi_params import OverridesParameter
    param = OverridesParameter(default={})
    assert dict(param.parse('{"lr": 1}')) == {"lr": 1.0}
    with pytest.raises(ConfigError, match="not valid JSON"):
        param.parse("{lr: 1}")
    with pytest.raises(ConfigError, match=r"lr must be a number in \(0, 1\]"):
        param.parse('{"lr": -1}')


def test_luigi_outside_the_repository_folder_says_where_to_run_it(tmp_path):
    # without luigi.cfg Luigi would try a central scheduler at localhost:8082 for a minute and exit 0
    cmd = [sys.executable, "-m", "luigi", "--module", "tasks", "Demo", "--config", "999"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"colorize-fcn: error: no luigi.cfg with a [colorize] section in {tmp_path}: run luigi "
                           "from the repository folder"), line
    [(code, stderr)] = _run_all([cmd])                       # from the repository folder
    assert code == 35 and "luigi.cfg" not in stderr, stderr
