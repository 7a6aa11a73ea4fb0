"""Files that are not what they seem: symbolic link loops, FIFOs named *.jpg, folders.
Each is a counted skip with its reason (preprocessing) or a one-line error (colorize);
nothing opens a file that is not a regular file (pipeline/regular.py)."""
import contextlib
import json
import os
import signal
from pathlib import Path

import luigi
import pytest

import tasks
from conftest import build, write_photo
from pipeline import fingerprint as fpmod
from pipeline import regular
from pipeline.images import SkipImage, load_rgb

GOOD = [f"p{i}.png" for i in range(4)]
ODD = {"loop.jpg": "unreadable", "pipe.jpg": "not_a_file", "pair/a.jpg": "unreadable"}


class Hung(BaseException):
    """Not an Exception: no `except Exception` of the code under test may swallow it."""


@contextlib.contextmanager
def deadline(seconds):
    """Fail (instead of hanging the suite) when a FIFO is opened and blocks."""
    def expired(*_):
        raise Hung(f"still running after {seconds} s: a FIFO opened for reading?")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def odd_dataset(root: Path) -> Path:
    for i, rp in enumerate(GOOD):
        write_photo(root / rp, seed=i)
    os.symlink("loop.jpg", root / "loop.jpg")                   # a link to itself
    os.mkfifo(root / "pipe.jpg")
    (root / "pair").mkdir()
    os.symlink("b.jpg", root / "pair" / "a.jpg")                # a -> b -> a
    os.symlink("a.jpg", root / "pair" / "b.jpg")
    (root / "files_train.txt").write_text("\n".join(GOOD[:3] + list(ODD)) + "\n")
    (root / "files_val.txt").write_text(GOOD[3] + "\n")
    return root


@contextlib.contextmanager
def fingerprint_mode(mode):
    cfg = luigi.configuration.get_config()
    saved = cfg.get("colorize", "fingerprint", None)
    cfg.set("colorize", "fingerprint", mode)
    try:
        yield
    finally:
        if saved is None:
            cfg.remove_option("colorize", "fingerprint")
        else:
            cfg.set("colorize", "fingerprint", saved)


@pytest.mark.parametrize("mode", fpmod.MODES)
def test_symlink_loops_and_fifos_are_counted_skips_in_both_fingerprint_modes(work, tmp_path, mode):
    root = odd_dataset(tmp_path / "odd")
    split = tasks.LabSplit(dataset=str(root), im_size=16, split="train", shard_size=2)
    with fingerprint_mode(mode), deadline(60):
        build(split)
        manifest = json.loads(Path(split.output().path).read_text())
    assert manifest["n_images"] == 3 and manifest["n_skipped"] == 3
    assert {rp: reason for rp, reason, _ in manifest["skipped"]} == ODD
    details = {rp: detail for rp, _, detail in manifest["skipped"]}
    assert "symbolic link loop" in details["loop.jpg"] and "FIFO" in details["pipe.jpg"], details


@pytest.mark.parametrize("mode", fpmod.MODES)
def test_fingerprints_of_odd_paths_are_markers_that_change_when_the_file_appears(tmp_path, mode):
    root = odd_dataset(tmp_path / "odd")
    with deadline(30):
        fps = fpmod.fingerprint_files(root, list(ODD), mode)
    assert fps[0] == fps[2] == "unreadable-ELOOP"
    assert fps[1].startswith("unreadable-" if mode == "content" else "0-"), fps
    os.unlink(root / "loop.jpg")
    write_photo(root / "loop.jpg", seed=1)
    assert fpmod.fingerprint_files(root, ["loop.jpg"], mode)[0] not in ("unreadable-ELOOP", "missing")


def test_nothing_opens_a_fifo_even_one_swapped_in_after_the_check(tmp_path, monkeypatch):
    fifo = tmp_path / "late.jpg"
    os.mkfifo(fifo)
    with pytest.raises(regular.NotRegular, match=r"^a FIFO \(named pipe\), not a regular file$"):
        regular.open_regular(fifo)
    with pytest.raises(SkipImage) as e:
        load_rgb(fifo, 16)
    assert e.value.reason == "not_a_file"
    monkeypatch.setattr(regular, "check_regular", lambda path: None)    # the file changed after its check
    with deadline(10), pytest.raises(regular.NotRegular) as e:
        regular.open_regular(fifo)
    assert e.value.reason == "not_a_file"
    with deadline(10), pytest.raises(regular.NotRegular):
        fpmod.content_digest(fifo)


# ----------------------------------------------------------------------------- colorize
def _colorize_inputs(tmp_path):
    from test_colorize import _photo
    from PIL import Image
    Image.fromarray(_photo()).save(tmp_path / "ok.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink("nowhere.png", tmp_path / "dangling.png")
    return tmp_path


def test_colorize_checks_every_named_input_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from test_colorize import _colorize_here, fake_run
    import inference.api
    run = fake_run(tmp_path / "model")
    d = _colorize_inputs(tmp_path)
    loaded = []
    real = inference.api.load_colorizer
    monkeypatch.setattr(inference.api, "load_colorizer", lambda *a, **k: loaded.append(a) or real(*a, **k))
    named = [d / "loop.png", d / "no_such_folder", d / "ok.png", d / "pipe.png", d / "dangling.png",
             str(d / "nothing*.png")]
    with deadline(60):
        code, err = _colorize_here(capsys, run, *named, "--out", d / "out")
    assert code == 2 and loaded == [] and not (d / "out").exists(), err
    assert err.splitlines() == [f"colorize-fcn: error: {p}: {why}" for p, why in [
        (d / "loop.png", "a symbolic link loop (too many levels of symbolic links)"),
        (d / "no_such_folder", "no such file or folder"),
        (d / "pipe.png", "a FIFO (named pipe), not a regular file"),
        (d / "dangling.png", "a symbolic link to nothing (no such file or folder)"),
        (d / "nothing*.png", "no file matches this pattern")]]
    code, err = _colorize_here(capsys, run, d / "ok.png", "--out", d / "out")    # the good one alone
    assert code == 0 and err == "" and (d / "out" / "ok.png").is_file() and len(loaded) == 1


def test_colorize_reports_loops_and_fifos_inside_a_folder_and_does_the_rest(tmp_path, capsys):
    from test_colorize import _colorize_here, fake_run
    run = fake_run(tmp_path / "model")
    (tmp_path / "in").mkdir()
    _colorize_inputs(tmp_path / "in")
    with deadline(60):
        code, err = _colorize_here(capsys, run, tmp_path / "in", str(tmp_path / "in" / "*.png"),
                                   "--out", tmp_path / "out")
    assert code == 1 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.png"], err
    assert sorted(err.splitlines()) == sorted(f"colorize-fcn: error: {tmp_path / 'in' / name}: {why}" for name, why in [
        ("dangling.png", "no such file"),
        ("loop.png", "a symbolic link loop (too many levels of symbolic links)"),
        ("pipe.png", "a FIFO (named pipe), not a regular file")])


def test_skip_existing_with_a_fifo_where_an_output_goes_neither_hangs_nor_keeps_it(tmp_path, capsys):
    from test_colorize import _colorize_here, fake_run
    run = fake_run(tmp_path / "model")
    (tmp_path / "in").mkdir()
    _colorize_inputs(tmp_path / "in")
    os.unlink(tmp_path / "in" / "pipe.png")
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "ok.png")                      # where ok.png's output goes
    with deadline(30):
        code, err = _colorize_here(capsys, run, tmp_path / "in" / "ok.png", "--out", tmp_path / "out",
                                   "--skip-existing")
    assert code == 2 and "ok.png exists but records no input" in err, err
