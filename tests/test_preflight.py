"""Refused before any work (issue 16 §2): keys that do not fit together and what cannot fit in
this machine's memory are one line and exit 35 at the command line, not Luigi's run summary;
what is merely large is one warning line.  (The estimate itself: tests/test_memory.py.)"""
import re

import luigi
import pytest

import tasks
from pipeline import luigi_params
from pipeline.config import ConfigError
from pipeline.memory import Machine
from test_errors import _luigi, _run_all

ANY_MEMORY = r"more than this machine's [\d.]+ GB of (RAM|GPU \d+ memory|the smallest GPU memory); lower "


REFUSED = [  # (task, --overrides, what its one line says)
    # keys that do not fit together (before: 9 lines with Luigi's summary)
    ("TrainFCN16s", '{"im_size": 3}', r"config 102 with overrides: im_size 3 must be a multiple of img_lowpass 8$"),
    ("Evaluate", '{"img_lowpass": 3}', r"config 102 with overrides: im_size 32 must be a multiple of img_lowpass 3$"),
    ("TrainFCN16s", '{"init_config": 99}', r"overrides: init_config must be an integer among the configs \[7, "),
    # what cannot fit in memory (before: an allocation failure after the preprocessing)
    ("Evaluate", '{"width": 4, "im_size": 1024, "batch_size": 65536}',      # FCN-16s and the 32s it starts from
     r"config 102 with overrides: a training step of fcn16s needs about [\d.]+ GB, " + ANY_MEMORY),
    ("PrepareRun", '{"shard_size": 65536, "im_size": 4096}',
     r"config 102 with overrides: building a Lab shard needs about 26388[\d.]+ GB, more than this machine's "
     r"[\d.]+ GB of RAM; lower shard_size or im_size$"),
    ("PrepareRun", '{"gmm_images": 2000000, "gmm_pixels": 65536}',
     r"config 102 with overrides: the GMM fit needs about [\d.]+ GB, more than this machine's [\d.]+ GB of RAM; "
     r"lower gmm_images, gmm_pixels or gmm_pixels_few$"),
]


def test_refused_in_one_line_with_exit_35_before_any_work(tmp_path, photo_dataset):
    works = [tmp_path / f"work{i}" for i in range(len(REFUSED))]
    results = _run_all([_luigi(task, "--overrides", overrides, work=work, dataset=photo_dataset)   # all at once
                        for (task, overrides, _), work in zip(REFUSED, works)])
    for (task, _, says), work, (code, stderr) in zip(REFUSED, works, results):
        assert code == 35, stderr
        [line] = stderr.splitlines()
        assert re.match(f"colorize-fcn: error: {task}: ConfigError: {says}", line), line
        assert {p.relative_to(work).parts[0] for p in work.rglob("*") if p.is_file()} <= {"logs"}   # nothing built


@pytest.fixture
def machine(monkeypatch):
    """The checks see a machine of 10 GB of RAM and no GPU."""
    small = Machine(ram=10 * 10 ** 9)
    monkeypatch.setattr(luigi_params, "machine_memory", lambda device: small)
    luigi.task_register.Register.clear_instance_cache()
    yield small
    luigi.task_register.Register.clear_instance_cache()


def test_a_large_need_is_one_warning_line_and_a_small_one_none(machine, capsys):
    assert [run.arch for run in tasks.TrainFCN16s(config=102).runs] == ["fcn16s", "fcn32s"]
    tasks.TrainFCN16s(config=102).deps()
    assert capsys.readouterr().err == ""
    tasks.TrainFCN32s(config=102, overrides={"width": 1.5}).deps()      # above half of the 10 GB
    assert capsys.readouterr().err.splitlines() == [
        "colorize-fcn: warning: config 102 with overrides: a training step of fcn32s needs about 8.3 GB, "
        "82% of this machine's 10.0 GB of RAM"]


def test_outside_a_command_line_the_task_refuses_while_scheduling(machine):
    """luigi.build: Luigi asks deps() of the tasks it will run; the same message, a scheduling failure."""
    task = tasks.TrainFCN32s(config=102, overrides={"width": 2})       # made without error
    with pytest.raises(ConfigError, match=r"^config 102 with overrides: a training step of fcn32s needs about "
                                          r"1[34]\.\d GB, more than this machine's 10\.0 GB of RAM; lower"):
        task.deps()
    prepare = tasks.PrepareRun(config=102, overrides={"width": 2})     # builds shards only: no training figure
    assert len(prepare.deps()) == 4


def test_a_complete_run_is_not_refused(tmp_path, photo_dataset, machine):
    """A run trained elsewhere (a bigger machine, a GPU) is complete: Luigi asks it no deps(), so
    it is not refused here, and Evaluate of it checks nothing of its own."""
    from conftest import work_dir_settings
    with work_dir_settings(tmp_path / "work"):
        run = tasks.TrainFCN32s(config=102, overrides={"width": 2}, dataset=str(photo_dataset))
        for name in ("done.json", "best.pt"):
            (run.run_dir() / name).parent.mkdir(parents=True, exist_ok=True)
            (run.run_dir() / name).write_text("{}")
        assert run.complete()
        assert luigi.build([run], local_scheduler=True)                 # width 2 needs ~13.7 GB: refused if asked
        assert tasks.Evaluate(config=102, overrides={"width": 2}, dataset=str(photo_dataset), arch="fcn32s").deps()


def test_a_work_dir_that_cannot_hold_outputs_is_one_line_before_any_work(tmp_path, photo_dataset):
    """Before: one error line per shard task, exit 30, after the planning."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [(a_file, f"work dir {a_file} is not a folder "),
             (a_file / "work", f"work dir {a_file / 'work'} cannot hold outputs: Not a directory ")]
    results = _run_all([_luigi("TrainFCN32s", work=work, dataset=photo_dataset) for work, _ in cases])
    for (work, says), (code, stderr) in zip(cases, results):
        assert code == 35, stderr
        [line] = stderr.splitlines()
        assert line == (f"colorize-fcn: error: TrainFCN32s: ConfigError: {says}"
                        "(--colorize-work-dir or luigi.cfg [colorize] work_dir)"), line
    assert a_file.read_text() == "" and sorted(tmp_path.iterdir()) == [a_file, tmp_path / "photos"]
