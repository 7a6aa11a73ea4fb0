"""The Python API (inference.api): load a run, colorize images in memory; the README's snippet."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import inference
from inference.api import load_colorizer
from inference.images import InputError
from pipeline.color import rgb_to_lab
from test_colorize import SIZE, assert_keeps_lightness, fake_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def model(run):
    return load_colorizer(run, device="cpu")


def _photo(h, w, seed=0):
    """(h, w, 3) uint8: a resized crop of a bundled photo (colours and edges, not noise)."""
    import skimage.data
    img = skimage.data.astronaut()[40 + 20 * seed:360, 100:420]
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def _lightness_of(rgb):
    return rgb_to_lab(np.asarray(rgb, np.uint8))[..., 0]


def _alpha_on_white(rgba):
    rgba = rgba.astype(np.float64)
    a = rgba[..., 3:] / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


def test_load_a_run_folder_or_its_file(run, model):
    from_file = load_colorizer(run / "best.pt", device="cpu")
    assert inference.load_colorizer is load_colorizer                 # the lazy package-level name
    with pytest.raises(AttributeError):
        inference.no_such_name
    for m in (model, from_file):
        assert str(m.device) == "cpu" and m.im_size == SIZE
        assert m.finished and (m.iteration, m.max_iteration) == (1, 1)
    image = _photo(37, 53)
    np.testing.assert_array_equal(np.asarray(from_file.colorize(image)), np.asarray(model.colorize(image)))
    unfinished = load_colorizer(fake_run(run.parent.parent / "more", iteration=3, max_iteration=9), "cpu")
    assert not unfinished.finished and (unfinished.iteration, unfinished.max_iteration) == (3, 9)
    assert "may not have finished" in unfinished.unfinished_note()


def test_a_finished_run_whose_best_validation_was_not_the_last(tmp_path):
    # best.pt holds the best validation's iteration (250), not the run's last (300): done.json
    # beside it says whether the run finished
    folder = fake_run(tmp_path, iteration=250, max_iteration=300)
    done = {"complete": True, "iterations": 300, "best_iteration": 250}
    (folder / "done.json").write_text(json.dumps(done))
    m = load_colorizer(folder, "cpu")
    assert m.finished and m.unfinished_note() is None and m.iteration == 250
    (folder / "done.json").write_text(json.dumps({**done, "complete": False}))
    m = load_colorizer(folder / "best.pt", "cpu")
    assert not m.finished and "comes from an unfinished run (weights of iteration 250 of 300)" in m.unfinished_note()
    (folder / "done.json").write_text("{truncated")
    assert not load_colorizer(folder, "cpu").finished             # unreadable: as if absent


def _inputs(h, w):
    """name -> (input, (h, w) lightness the output must keep)."""
    rgb = _photo(h, w)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.concatenate([rgb, np.random.default_rng(h * w).integers(0, 256, (h, w, 1), dtype=np.uint8)], -1)
    return {"PIL RGB": (Image.fromarray(rgb), _lightness_of(rgb)),
            "PIL L": (Image.fromarray(gray), _lightness_of(np.repeat(gray[..., None], 3, -1))),
            "array HxW": (gray, _lightness_of(np.repeat(gray[..., None], 3, -1))),
            "array HxWx3": (rgb, _lightness_of(rgb)),
            "array HxWx4": (rgba, _lightness_of(_alpha_on_white(rgba)))}


@pytest.mark.parametrize("h, w", [(37, 53), (53, 37), (1, 1), (SIZE, SIZE)])
def test_colorize_keeps_size_and_lightness_of_every_kind_of_input(model, h, w):
    for name, (image, L) in _inputs(h, w).items():
        out = model.colorize(image)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (w, h), name
        if h * w > 1:
            assert_keeps_lightness(out, L)
        else:                                       # one pixel: may be out of gamut; rounding only else
            assert abs(_lightness_of(out)[0, 0] - L[0, 0]) < (1.0 if 0 < np.asarray(out).min() and
                                                               np.asarray(out).max() < 255 else 5.0), name
    colour = rgb_to_lab(np.asarray(model.colorize(_photo(h, w), decoder="mean")))[..., 1:]
    if h * w > 1:
        assert np.hypot(colour[..., 0], colour[..., 1]).mean() > 3      # it does add colour


def test_colorize_batch_is_colorize_one_by_one(model):
    images = [_photo(37, 53), _photo(1, 1), np.asarray(Image.fromarray(_photo(20, 64, seed=2)).convert("L")),
              Image.fromarray(_photo(SIZE, SIZE, seed=3))]
    for decoder, t in (("annealed", 0.38), ("mean", 1.0), ("annealed", 0.1)):
        batch = model.colorize_batch(images, decoder=decoder, temperature=t)
        assert len(batch) == len(images)
        for image, got in zip(images, batch):
            want = np.asarray(model.colorize(image, decoder=decoder, temperature=t)).astype(int)
            # batched convolutions may round differently in the last float bit: 1 uint8 level at most
            assert np.abs(np.asarray(got).astype(int) - want).max() <= 1
    assert model.colorize_batch([]) == []
    a, b = (np.asarray(model.colorize(images[0], decoder=d)).astype(int) for d in ("max", "mean"))
    assert np.abs(a - b).max() > 5                                   # the decoder is honoured


@pytest.mark.parametrize("bad, words", [
    (np.zeros((8, 8), np.float32), "uint8"),
    (np.zeros((8, 8, 3), np.float64), "uint8"),
    (np.zeros((8, 8, 2), np.uint8), "(8, 8, 2)"),
    (np.zeros((2, 8, 8, 3), np.uint8), "(2, 8, 8, 3)"),
    (np.zeros((0, 5), np.uint8), "empty"),
    ("photo.jpg", "str"),
])
def test_bad_inputs_are_one_line_input_errors(model, bad, words):
    with pytest.raises(InputError) as e:
        model.colorize(bad)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    with pytest.raises(InputError):
        model.colorize_batch([_photo(8, 8), bad])


# ----------------------------------------------------------------------------- the README
def readme_snippet(text: str) -> str:
    """The first ```python block under the README's '## Python API' heading."""
    section = re.search(r"^## Python API\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "README.md has no '## Python API' section"
    block = re.search(r"^```python\s*$(.*?)^```", section.group(1), re.M | re.S)
    assert block, "README.md's '## Python API' section has no ```python block"
    return block.group(1)


def run_snippet(code: str, run_dir, image_path) -> dict:
    """exec() the snippet with its `run = ...` line pointing at run_dir and "old_photo.jpg"
    replaced by image_path; returns its namespace."""
    code, n = re.subn(r"^run\s*=.*$", f"run = {str(run_dir)!r}", code, count=1, flags=re.M)
    assert n == 1, "the README's Python API snippet must set the run folder in a line `run = ...`"
    assert '"old_photo.jpg"' in code, 'the README snippet must read the image "old_photo.jpg"'
    code = code.replace('"old_photo.jpg"', repr(str(image_path)))
    namespace = {"__name__": "readme_snippet"}
    exec(compile(code, "README.md:Python API", "exec"), namespace)
    return namespace


def test_readme_python_api_snippet_runs(run, tmp_path, monkeypatch):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(_photo(45, 61)).save(photo, quality=95)
    monkeypatch.chdir(tmp_path)                       # anything the snippet saves lands here
    namespace = run_snippet(readme_snippet((ROOT / "README.md").read_text()), run, photo)
    outputs = [v for v in namespace.values() if isinstance(v, Image.Image) and v.mode == "RGB"]
    assert outputs and all(o.size == (61, 45) for o in outputs), namespace.keys()
