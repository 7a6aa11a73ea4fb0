"""Row i of a Lab shard holds the Lab of paths[i], also after skipped files (a shard's
rows out of line with its paths would give every image after a bad one its neighbour's
pixels, silently).  Small images, no Luigi: under a second."""
import numpy as np

from conftest import write_photo
from pipeline.color import rgb_to_lab
from pipeline.images import load_rgb_with_size
from pipeline.preprocess import build_lab_shard
from pipeline.shards import decode_ab, decode_L, read_array


def assert_rows_match_paths(root, shard_path, im_size):
    """Every row of the shard is the Lab of the file its `paths` entry names (within half the
    uint8 L and int8 a/b steps, 0.39 and 1 Lab units), and the rows of different files differ."""
    paths = list(read_array(shard_path, "paths"))
    L, ab = decode_L(read_array(shard_path, "L")), decode_ab(read_array(shard_path, "ab"))
    assert len(paths) == len(L) == len(ab)
    for i, rp in enumerate(paths):
        rgb, _ = load_rgb_with_size(root / rp, im_size)
        lab = rgb_to_lab(rgb)
        np.testing.assert_allclose(L[i], lab[..., 0], atol=0.2, err_msg=f"row {i} is not {rp}")
        np.testing.assert_allclose(ab[i], np.moveaxis(lab[..., 1:], -1, 0), atol=0.51, err_msg=rp)
    return paths


def test_rows_stay_in_line_with_paths_after_unreadable_files(tmp_path):
    names = ["a.png", "broken.png", "b.png", "missing.png", "c.png", "empty.png", "d.png"]
    for seed, name in enumerate(names):
        if name in ("a.png", "b.png", "c.png", "d.png"):
            write_photo(tmp_path / name, seed=seed, size=(40, 30))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    summary = build_lab_shard(tmp_path, names, 16, tmp_path / "lab.h5")
    assert summary["n_images"] == 4 and [s[0] for s in summary["skipped"]] == ["broken.png", "missing.png",
                                                                                 "empty.png"]
    paths = assert_rows_match_paths(tmp_path, tmp_path / "lab.h5", 16)
    assert paths == ["a.png", "b.png", "c.png", "d.png"]
    L = decode_L(read_array(tmp_path / "lab.h5", "L"))
    assert all(not np.allclose(L[i], L[i + 1]) for i in range(3))     # four different photos
