"""What `colorize-fcn colorize` says about odd inputs, models and options (CPU, fast: the tiny
untrained model of test_colorize)."""
import argparse
import pickle
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from inference.api import ModelError, load_colorizer
from inference.cli import build_parser, main
from inference.files import collect_inputs
from test_colorize import _colorize_here, _photo, fake_run

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pipeline folders
def test_common_file_names_in_an_ancestor_folder_make_no_run_folder(tmp_path, capsys):
    """done.json, inputs.json, or metrics.json with report.html, in a folder above one's photos:
    an ordinary project folder, not a run or evaluation folder."""
    run = fake_run(tmp_path / "model")
    proj = tmp_path / "proj"
    photos = proj / "photos"
    photos.mkdir(parents=True)
    Image.fromarray(_photo()).save(photos / "p.png")
    for names in (["done.json"], ["inputs.json"], ["done.json", "inputs.json", "config.json"],
                  ["metrics.json", "report.html"]):
        for name in names:
            (proj / name).write_text("{}")
        items, errors, refused = collect_inputs([photos], tmp_path / "out")
        assert refused == [] and errors == [] and [s.name for s, _ in items] == ["p.png"], names
        for name in names:
            (proj / name).unlink()
    (proj / "done.json").write_text("{}")
    code, err = _colorize_here(capsys, run, photos, "--out", tmp_path / "out")
    assert code == 0 and err == "" and (tmp_path / "out" / "p.png").is_file(), err
    # with a file that train.fit writes next to it, it is a run folder again
    (proj / "log.csv").write_text("iteration\n")
    _, _, refused = collect_inputs([photos], tmp_path / "out2")
    assert [Path(f) for f, _ in refused] == [proj.resolve()]
    assert "training run folder (holds done.json and log.csv)" in refused[0][1]


# ----------------------------------------------------------------------------- bad checkpoints
def _bad_checkpoints(folder):
    """{name: (file, what the message must say)}"""
    run = fake_run(folder / "good")
    data = (run / "best.pt").read_bytes()
    files = {"text.pt": (b"hello world\n", "not a PyTorch checkpoint (not a zip/pickle file)"),
             "image.pt": (None, "not a PyTorch checkpoint (not a zip/pickle file)"),
             "truncated.pt": (data[:len(data) // 2], "truncated or corrupt checkpoint (delete it;"),
             "empty.pt": (b"", "empty file (0 bytes)"),
             "pickle.pt": (pickle.dumps({"a": 1}, protocol=4), "a pickle file, not a weights-only"),
             "archive.pt": (None, "a zip file, not a PyTorch checkpoint")}
    out = {}
    for name, (content, says) in files.items():
        path = folder / name
        if name == "image.pt":
            Image.fromarray(_photo()).save(path, format="PNG")
        elif name == "archive.pt":
            import zipfile
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("notes.txt", "not a checkpoint")
        else:
            path.write_bytes(content)
        out[name] = (path, says)
    return out


def test_unloadable_checkpoints_say_what_is_wrong_in_one_line(tmp_path, recwarn):
    for name, (path, says) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(ModelError) as e:
            load_colorizer(path, "cpu")
        msg = str(e.value)
        assert "\n" not in msg and says in msg, (name, msg)
        assert msg.count(str(path)) == 1, msg                     # the file, once
        assert "weights_only" not in msg and "False" not in msg, msg   # never advice to load unsafely
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_a_corrupt_best_pt_in_a_run_folder_is_named(tmp_path):
    run = fake_run(tmp_path)
    data = (run / "best.pt").read_bytes()
    (run / "best.pt").write_bytes(data[:1000])
    with pytest.raises(ModelError) as e:
        load_colorizer(run, "cpu")
    assert str(e.value).startswith(f"{run / 'best.pt'}: truncated or corrupt checkpoint (delete it;"), e.value


# ----------------------------------------------------------------------------- --device
def test_a_bad_device_is_a_usage_error_naming_the_option(tmp_path, capsys):
    run = fake_run(tmp_path)
    for bad in ("gpu", "cuda:x", "CPU"):
        with pytest.raises(SystemExit) as e:
            main(["colorize", "--model", str(run), "x.png", "--out", str(tmp_path / "o"), "--device", bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument --device: unknown device '{bad}'" in err, err
        assert "cannot load model" not in err
    for good in ("auto", "cpu", "cuda", "cuda:1"):
        args = build_parser().parse_args(["colorize", "--model", "m", "x.png", "--out", "o", "--device", good])
        assert args.device == good
    with pytest.raises(ValueError, match="unknown device 'gpu'"):     # the API: a bad argument, not a bad model
        load_colorizer(run, "gpu")


# ----------------------------------------------------------------------------- inputs
def test_an_image_between_pils_soft_and_hard_limits_colorizes_without_pils_warning(tmp_path, capsys,
                                                                                   monkeypatch):
    run = fake_run(tmp_path)
    Image.fromarray(_photo(40, 40)).save(tmp_path / "big.png")        # 1600 pixels: above 1000, below 2000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code, err = _colorize_here(capsys, run, tmp_path / "big.png", "--out", tmp_path / "out")
    assert code == 0 and (tmp_path / "out" / "big.png").is_file(), err
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)], seen
    assert "DecompressionBomb" not in err, err


def test_an_empty_input_file_is_reported_as_empty(tmp_path, capsys):
    run = fake_run(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(_photo()).save(tmp_path / "ok.png")
    code, err = _colorize_here(capsys, run, tmp_path / "empty.png", tmp_path / "ok.png", "--out", tmp_path / "out")
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(errors) == 1 and errors[0].endswith("empty.png: empty file (0 bytes)"), err


# ----------------------------------------------------------------------------- documentation
def _colorize_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["colorize"]


def test_readme_usage_lists_every_colorize_option_and_help_states_no_figures():
    readme = (ROOT / "README.md").read_text()
    usage = readme[readme.index("colorize-fcn colorize --model work/runs/fcn16s-c101-<sig> photos/"):]
    usage = usage[:usage.index("```")]
    options = [max(a.option_strings, key=len) for a in _colorize_parser()._actions
               if a.option_strings and a.dest != "help"]
    missing = [o for o in options if o not in usage and o.replace("--quiet", "-q") not in usage]
    assert missing == [], missing
    help_text = _colorize_parser().format_help()
    assert not re.search(r"\d+x (smaller|faster)", help_text), "speed/size figures belong in the README only"
