"""A Luigi run marks its work dir as being built while it runs (pipeline/builds.py), so that
`colorize-fcn gc` keeps what it writes; an output deleted under a run anyway is named."""
import logging
import os
from pathlib import Path

import luigi

from pipeline.builds import live_builds


class _Write(luigi.Task):
    """Writes <work>/<name>; records the live builds of its work dir while it runs."""
    work = luigi.Parameter()
    name = luigi.Parameter()
    seen = []

    def work_dir(self) -> Path:
        return Path(self.work)

    def output(self):
        return luigi.LocalTarget(str(Path(self.work) / self.name))

    def run(self):
        _Write.seen.append(live_builds(self.work))
        Path(self.output().path).write_text("x")


class _Down(_Write):
    """Needs _Write(up.txt) and deletes it while it runs, as a gc in another shell would."""

    def requires(self):
        return _Write(work=self.work, name="up.txt")

    def complete(self):
        return super().complete() and self.requires().complete()

    def run(self):
        super().run()
        os.remove(self.requires().output().path)


def test_a_run_marks_its_work_dir_while_it_runs(tmp_path):
    _Write.seen.clear()
    assert luigi.build([_Write(work=str(tmp_path), name="a.txt")], local_scheduler=True, log_level="WARNING")
    [[build]] = _Write.seen
    assert (build["pid"], build["marker"]) == (os.getpid(), f"building-{os.uname().nodename}-{os.getpid()}")
    assert live_builds(tmp_path) == [] and list((tmp_path / "logs").iterdir()) == []   # ended with the run


def test_an_output_deleted_while_the_run_runs_is_named(tmp_path, caplog):
    cfg = luigi.configuration.get_config()
    cfg.set("worker", "check_complete_on_run", "true")
    with caplog.at_level(logging.ERROR, logger="colorize-fcn"):
        assert not luigi.build([_Down(work=str(tmp_path), name="down.txt")], local_scheduler=True,
                               log_level="WARNING")
    lines = [r.getMessage() for r in caplog.records if r.name == "colorize-fcn"]
    assert lines == [f"colorize-fcn: error: _Down: it ran, but {tmp_path / 'up.txt'} is gone: deleted while "
                     "this build ran (by `colorize-fcn gc --min-age 0` in another shell, or by hand?); the "
                     "same command rebuilds it"], lines
