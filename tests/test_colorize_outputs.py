"""What `colorize-fcn colorize` does with its outputs: --skip-existing keeps only outputs made
from the same input, an output that appears meanwhile is never replaced, an unwritable --out
fails before any work, and an input folder inside --out is named as such (CPU, fast)."""
import errno
import os
from pathlib import Path

import pytest
from PIL import Image

import inference.api
import inference.files
from inference.files import collect_inputs
from pipeline.atomic import TargetExists, atomic_path

from test_colorize import _colorize_here, _photo, _photo_folder, fake_run


def _two_photos_named_x(tmp_path):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for path, flip in ((a, False), (b, True)):
        path.parent.mkdir()
        photo = _photo()
        Image.fromarray(photo[:, ::-1] if flip else photo).save(path)
    return a, b


def _names(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_skip_existing_keeps_only_outputs_made_from_the_same_input(tmp_path, capsys, fmt):
    run = fake_run(tmp_path)
    a, b = _two_photos_named_x(tmp_path)
    out = tmp_path / "out"
    assert _colorize_here(capsys, run, b, "--out", out, "--format", fmt)[0] == 0
    made = _names(out)
    assert list(made) == [f"x.{fmt}"]
    # a rerun with the same input keeps it (no model needed)
    code, err = _colorize_here(capsys, tmp_path / "no-model", b, "--out", out, "--format", fmt, "--skip-existing")
    assert code == 0 and err == "", err
    # with a added, x.<fmt> is a's name now: b's output must not pass for a's
    code, err = _colorize_here(capsys, run, a, b, "--out", out, "--format", fmt, "--skip-existing")
    assert code == 2, err
    assert err.count("\n") == 1 and f"x.{fmt} exists but was made from another input" in err, err
    assert "--overwrite" in err and _names(out) == made                  # refused before any work
    # b changed since its output was made
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))
    code, err = _colorize_here(capsys, run, b, "--out", out, "--format", fmt, "--skip-existing")
    assert code == 2 and "made from an earlier version of" in err and _names(out) == made, err
    # --overwrite remakes it from a, and then a's rerun is skipped
    assert _colorize_here(capsys, run, a, "--out", out, "--format", fmt, "--overwrite")[0] == 0
    assert _colorize_here(capsys, tmp_path / "no-model", a, "--out", out, "--format", fmt, "--skip-existing")[0] == 0


def test_redo_changed_redoes_only_the_outputs_whose_input_changed(tmp_path, capsys):
    run = fake_run(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("p.png", "q.png", "r.png")):
        Image.fromarray(_photo()[:, ::-1] if i == 1 else _photo()).save(photos / name)
    out = tmp_path / "out"
    assert _colorize_here(capsys, run, photos, "--out", out)[0] == 0
    before = {n: (out / n).stat().st_mtime_ns for n in ("p.png", "q.png", "r.png")}
    q = photos / "q.png"
    Image.fromarray(_photo()).save(q)                                   # one source changed
    code, err = _colorize_here(capsys, run, photos, "--out", out, "--skip-existing")
    assert code == 2 and err.count("\n") == 1 and "--redo-changed redoes it" in err, err   # as before
    code, err = _colorize_here(capsys, run, photos, "--out", out, "--redo-changed")
    assert code == 0 and err == "", err                                  # -q
    after = {n: (out / n).stat().st_mtime_ns for n in before}
    assert after["p.png"] == before["p.png"] and after["r.png"] == before["r.png"]
    assert after["q.png"] != before["q.png"]
    assert inference.files.output_mismatch(q, out / "q.png") is None     # records the new q
    code, err = _colorize_here(capsys, tmp_path / "no-model", photos, "--out", out, "--redo-changed")
    assert code == 0 and err == "", err                                  # nothing changed: no model needed


def test_an_output_that_appears_meanwhile_is_not_replaced(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path)
    src = _photo_folder(tmp_path / "in", ("p", "q"))
    out = tmp_path / "out"
    load = inference.files.load_image

    def another_command_writes_p(path, *args):
        if Path(path).name == "p.png":
            (out / "p.png").write_bytes(b"theirs")        # after the check that outputs exist
        return load(path, *args)
    monkeypatch.setattr(inference.files, "load_image", another_command_writes_p)
    code, err = _colorize_here(capsys, run, src, "--out", out, "--batch-size", 1)
    assert code == 1, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "p.png appeared while this command ran" in errors[0], err
    assert "not replaced" in errors[0] and (out / "p.png").read_bytes() == b"theirs"
    assert sorted(_names(out)) == ["p.png", "q.png"]                     # q went on; no temporaries left
    code, err = _colorize_here(capsys, run, src, "--out", out, "--overwrite")
    assert code == 0 and (out / "p.png").read_bytes() != b"theirs", err


def test_publishing_without_replacing_works_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)                           # FAT / exFAT
    target = tmp_path / "t.txt"
    with atomic_path(target, replace=False) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(TargetExists, match="t.txt: it exists; not replaced"):
        with atomic_path(target, replace=False) as tmp:
            tmp.write_text("again")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


@pytest.mark.parametrize("bad", ["a-file", "a-file/sub"])
def test_an_unwritable_out_fails_before_the_model_loads(tmp_path, capsys, monkeypatch, bad):
    run = fake_run(tmp_path)
    Image.fromarray(_photo()).save(tmp_path / "p.png")
    (tmp_path / "a-file").write_bytes(b"x")
    loaded = []
    monkeypatch.setattr(inference.api, "load_colorizer", lambda *a, **k: loaded.append(a))
    code, err = _colorize_here(capsys, run, tmp_path / "p.png", "--out", tmp_path / bad)
    assert code == 2 and loaded == [], err
    assert err.count("\n") == 1 and "error: --out: " in err and str(tmp_path / bad) in err, err


def test_a_write_error_names_the_output_once(tmp_path, capsys):
    run = fake_run(tmp_path)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(_photo()).save(tmp_path / "in" / "sub" / "y.png")
    Image.fromarray(_photo()).save(tmp_path / "in" / "z.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_bytes(b"a file where the output's folder goes")
    code, err = _colorize_here(capsys, run, tmp_path / "in", "--out", out)
    assert code == 1, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].count(str(out / "sub" / "y.png")) == 1, errors
    assert "[Errno" not in errors[0] and (out / "z.png").exists()


def test_an_input_folder_inside_out_says_why(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    Image.fromarray(_photo()).save(out / "sub" / "old.png")
    items, errors, refused = collect_inputs([out, out / "sub"], out)
    assert items == [] and refused == [] and len(errors) == 2, errors
    assert all("is the output folder (or inside it)" in msg and "another --out" in msg for _, msg in errors)
    # --out inside an input folder: the input's other images are inputs, the outputs are not
    Image.fromarray(_photo()).save(tmp_path / "new.png")
    items, errors, _ = collect_inputs([tmp_path], out)
    assert [s.name for s, _ in items] == ["new.png"] and errors == []
