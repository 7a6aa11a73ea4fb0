"""Colour conversion, mixture posteriors, label encoding, shard planning, atomic writes, checksums."""
import os

import h5py
import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2lab

from pipeline.atomic import atomic_path, remove_stale_temporaries
from pipeline.color import ab_to_hue_chroma, hue_chroma_to_ab, lab_planes, lab_to_rgb, rgb_to_lab
from pipeline.gmm import fit_gmm, load_gmm, posteriors, save_gmm, uniform_grid
from pipeline.labels import lowpass_ab, target_posteriors
from pipeline.plan import group_files
from pipeline.shards import (L_SCALE, ShardError, decode_ab, decode_L, encode_lab, read_array, verify_shard,
                             write_shard)


def test_rgb_to_lab_matches_skimage():
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_lab(rgb), rgb2lab(rgb), atol=2e-3)


def test_lab_round_trip():
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)).astype(int) - rgb).max() <= 1
    lab = rgb2lab(rgb)
    assert np.abs(lab_to_rgb(lab).astype(int) - np.round(lab2rgb(lab) * 255)).max() <= 1


def test_hue_chroma_round_trip_and_red_at_zero():
    ab = np.random.default_rng(2).uniform(-100, 100, (500, 2)).astype(np.float32)
    f = ab_to_hue_chroma(ab[:, 0], ab[:, 1])
    assert f[:, 0].min() >= 0 and f[:, 0].max() < 1
    np.testing.assert_allclose(hue_chroma_to_ab(f), ab, atol=1e-3)
    assert ab_to_hue_chroma(50.0, 0.0)[0] == 0.0           # red (a>0, b=0) at hue 0


def test_posteriors_agree_with_sklearn_within_float16():
    from sklearn.mixture import GaussianMixture
    x = np.random.default_rng(3).random((3000, 2))
    gm = GaussianMixture(8, covariance_type="full", random_state=0, reg_covar=1e-6).fit(x)
    mine = posteriors(x, {"weights": gm.weights_, "means": gm.means_, "covariances": gm.covariances_})
    ref = gm.predict_proba(x)
    assert np.abs(mine - ref).max() < 1e-5
    assert np.abs(mine.astype(np.float16).astype(np.float64) - ref).max() < 1e-3   # stored encoding


def test_fit_gmm_is_deterministic_and_round_trips_without_pickle(tmp_path):
    x = np.random.default_rng(4).random((2000, 2))
    g1, g2 = fit_gmm(x, 4, seed=0), fit_gmm(x, 4, seed=0)
    np.testing.assert_array_equal(g1["means"], g2["means"])
    save_gmm(tmp_path / "g.npz", g1, signature="abc")
    g3 = load_gmm(tmp_path / "g.npz")
    for k in g1:
        np.testing.assert_array_equal(g1[k], g3[k])
    pickled = tmp_path / "bad.npz"
    np.savez(pickled, weights=np.array([{"x": 1}], dtype=object), means=np.zeros((1, 2)),
             covariances=np.eye(2)[None])
    with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
        load_gmm(pickled)                                        # object arrays are refused


def test_uniform_grid_properties():
    g = uniform_grid(16)
    assert g["means"].shape == (16, 2) and np.allclose(g["weights"].sum(), 1)
    np.testing.assert_allclose(g["covariances"][0], np.eye(2) * ((1 / 3) / np.sqrt(2)) ** 2)
    # a pixel at a bin centre is most likely in that bin
    p = posteriors(g["means"], g)
    assert (p.argmax(1) == np.arange(16)).all()
    with pytest.raises(ValueError, match="square number of clusters >= 4, got 15"):
        uniform_grid(15)


def test_lowpass_close_to_full_resolution_blur():
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(5)
    ab = gaussian_filter(rng.normal(0, 600, (2, 128, 128)), (0, 6, 6)).astype(np.float32)
    ref = gaussian_filter(ab, (0, 8, 8))[:, 4::8, 4::8]
    got = lowpass_ab(ab, 8)
    assert got.shape == (2, 16, 16)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    np.testing.assert_array_equal(lowpass_ab(ab, 1), ab)


def test_lowpass_does_not_smear_red_into_green():
    # left half red-magenta (hue just below 1), right half red-orange (hue just above 0)
    ab = np.zeros((2, 32, 32), np.float32)
    ab[0] = 60.0
    ab[1, :, :16], ab[1, :, 16:] = -10.0, 10.0
    f = ab_to_hue_chroma(*lowpass_ab(ab, 4))
    hue = f[..., 0]
    assert ((hue < 0.05) | (hue > 0.95)).all()                 # stays red; a hue blur would give ~0.5 (cyan)


def _reference_posteriors(ab, gmm, f):
    """The definition, computed the slow way: sigma-f Gaussian blur of a and b at full size,
    the f x f block means, hue/chroma, then Bayes' rule with the Gaussian densities."""
    from scipy.ndimage import gaussian_filter
    blur = np.stack([gaussian_filter(plane.astype(np.float64), f, mode="reflect") for plane in ab])
    s = ab.shape[-1] // f
    small = blur.reshape(2, s, f, s, f).mean(axis=(2, 4))
    x = ab_to_hue_chroma(small[0], small[1]).reshape(-1, 2).astype(np.float64)
    d = x[:, None, :] - gmm["means"][None]                                   # (N, K, 2)
    q = np.einsum("nki,kij,nkj->nk", d, np.linalg.inv(gmm["covariances"]), d)
    lik = gmm["weights"] * np.exp(-0.5 * q) / np.sqrt(np.linalg.det(gmm["covariances"]))
    return (lik / lik.sum(1, keepdims=True)).T.reshape(-1, s, s)


def test_target_posteriors_are_the_posteriors_of_the_low_passed_colours():
    # a smooth colour field (so the fast low-pass is within ~0.2 ab units of the full-size blur)
    y, x = np.mgrid[0:32, 0:32] / 32
    ab = np.stack([50 * np.cos(2 * np.pi * (x + 0.3 * y)), 50 * np.sin(2 * np.pi * (0.5 * x + y))]).astype(np.float32)
    g = {"weights": np.array([0.2, 0.3, 0.5]), "means": np.array([[0.1, 0.3], [0.5, 0.2], [0.8, 0.4]]),
         "covariances": np.tile(np.eye(2) * 0.02, (3, 1, 1))}
    p = target_posteriors(ab, g, 4)
    ref = _reference_posteriors(ab, g, 4)
    assert p.shape == ref.shape == (3, 8, 8) and p.dtype == np.float32
    np.testing.assert_allclose(p, ref, atol=0.03)
    assert p.max() > 0.95 and set(np.unique(p.argmax(0))) == {0, 1, 2}       # peaked, every cluster wins somewhere
    top2 = np.sort(ref, axis=0)[-2:]
    clear = top2[1] - top2[0] > 0.1                                          # not a near-tie
    assert clear.sum() > 48 and (p.argmax(0) == ref.argmax(0))[clear].all()
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-5)
    u = target_posteriors(ab, uniform_grid(9), 4)                            # the uniform grid too
    np.testing.assert_allclose(u, _reference_posteriors(ab, uniform_grid(9), 4), atol=0.01)


def test_shard_int8_ab_gives_the_float_labels():
    # the label stage low-passes the Lab shards' int8 planes directly (exact int32 block sums)
    rng = np.random.default_rng(7)
    ab = rng.uniform(-100, 100, (3, 2, 64, 64)).astype(np.float32)
    _, q = encode_lab(np.zeros((3, 64, 64)), ab)
    assert q.dtype == np.int8 and np.abs(decode_ab(q) - ab).max() <= 0.5
    for factor in (1, 4, 8):
        np.testing.assert_allclose(lowpass_ab(q, factor), lowpass_ab(decode_ab(q), factor), atol=1e-4)
    g = uniform_grid(16)
    np.testing.assert_allclose(target_posteriors(q, g, 8), target_posteriors(decode_ab(q), g, 8), atol=1e-5)
    features = rng.uniform(0, 1, (5, 7, 2))
    np.testing.assert_allclose(posteriors(features, g, k_first=True), np.moveaxis(posteriors(features, g), -1, 0))


def test_content_defined_grouping_is_local():
    files = [f"img{i:04d}.jpg" for i in range(400)]
    before = group_files(files, 16)
    assert all(len(g) <= 64 for g in before) and sum(map(len, before)) == 400
    after = group_files(files[:200] + ["new.jpg"] + files[200:], 16)
    changed = [g for g in after if g not in before]
    assert len(changed) <= 2 and any("new.jpg" in g for g in changed)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import socket
    dead = tmp_path / f".x.h5.tmp-{socket.gethostname()}-999999999-abcd"
    alive = tmp_path / f".y.h5.tmp-{socket.gethostname()}-{os.getpid()}-abcd"
    dead.write_text("x"), alive.write_text("y")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not dead.exists() and alive.exists()


def test_flipped_byte_is_detected_and_names_the_file(tmp_path):
    path = tmp_path / "s.h5"
    data = np.random.default_rng(7).random((3, 64, 64)).astype(np.float16)
    write_shard(path, {"L": data, "paths": ["a", "b", "c"]}, {"n_images": 3}, compression=None)
    np.testing.assert_array_equal(read_array(path, "L"), data)
    with h5py.File(path, "r") as f:
        offset = f["L"].id.get_chunk_info(1).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="s.h5"):
        verify_shard(path)


def test_shard_lab_layout_matches_float_lab_and_gray_comes_back_gray():
    rgb = np.random.default_rng(8).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    ref = rgb_to_lab(rgb)                                                  # (2, 40, 40, 3) float32
    L, ab = np.empty((2, 40, 40), np.uint8), np.empty((2, 2, 40, 40), np.int8)   # (a/b, image, y, x)
    lab_planes(rgb, L, ab, L_scale=L_SCALE)                                # as build_lab_shard
    want_L, want_ab = encode_lab(ref[..., 0], np.moveaxis(ref[..., 1:], -1, 0))
    assert np.abs(L.astype(int) - want_L).max() <= 1 and (L != want_L).mean() < 1e-3   # float32 ties
    assert np.abs(ab.astype(int) - want_ab).max() <= 1 and (ab != want_ab).mean() < 1e-3
    np.testing.assert_allclose(decode_L(L), ref[..., 0], atol=0.5 / L_SCALE + 1e-4)
    np.testing.assert_allclose(decode_ab(ab), np.moveaxis(ref[..., 1:], -1, 0), atol=0.5 + 1e-3)
    with pytest.raises(ShardError, match="must be uint8, got int16 .*older version"):
        decode_L(L.astype(np.int16))
    with pytest.raises(ShardError, match="must be int8, got int16"):
        decode_ab(ab.astype(np.int16))
    L_all = decode_L(np.arange(256, dtype=np.uint8))                       # every stored lightness
    gray = lab_to_rgb(np.stack([L_all, 0 * L_all, 0 * L_all], -1))
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()


def test_every_srgb_colour_fits_the_shard_layout():
    # uint8 L and int8 a/b hold every sRGB colour without clipping: the cube's corners and a grid
    levels = np.arange(0, 256, 15, dtype=np.uint8)                         # 0, 15, ..., 255
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1)
    lab = rgb_to_lab(rgb)
    assert lab[..., 0].min() >= 0 and lab[..., 0].max() * L_SCALE <= 255.5
    assert np.abs(lab[..., 1:]).max() < 127.5
    L, ab = np.empty(rgb.shape[:-1], np.uint8), np.empty((2,) + rgb.shape[:-1], np.int8)
    lab_planes(rgb, L, ab, L_scale=L_SCALE)
    assert L.max() == 255 and L.min() == 0
    np.testing.assert_allclose(ab, np.moveaxis(lab[..., 1:], -1, 0), atol=0.5 + 1e-3)


@pytest.mark.parametrize("compression", [None, "lzf", "szip", "gzip"])
def test_every_lab_compression_reads_back_the_same_arrays(tmp_path, compression):
    rng = np.random.default_rng(9)
    arrays = {"L": rng.integers(0, 25600, (3, 16, 16), dtype=np.int16),
              "sizes": rng.integers(1, 999, (3, 2), dtype=np.int32), "paths": ["a", "b", "c"]}
    path = tmp_path / f"{compression}.h5"
    write_shard(path, arrays, {"n_images": 3}, compression=compression)
    for name in ("L", "sizes"):
        np.testing.assert_array_equal(read_array(path, name), arrays[name])
    with h5py.File(path, "r") as f:
        assert f["L"].compression == (compression if compression != "none" else None)
        assert f["L"].fletcher32


def test_compression_per_array_leaves_the_others_raw(tmp_path):
    arrays = {"L": np.full((2, 16, 16), 7, np.uint8), "ab": np.full((2, 2, 16, 16), -3, np.int8)}
    write_shard(tmp_path / "s.h5", arrays, {}, compression={"ab": "szip"})
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["ab"].compression == "szip" and f["L"].compression is None
    for name in arrays:
        np.testing.assert_array_equal(read_array(tmp_path / "s.h5", name), arrays[name])
    with pytest.raises(ValueError, match="unknown compression 'zstd'"):
        write_shard(tmp_path / "t.h5", arrays, {}, compression={"ab": "zstd"})


def test_lab_shard_stores_uint8_L_raw_and_int8_ab_compressed(tmp_path):
    from PIL import Image

    from pipeline.preprocess import build_lab_shard
    rgb = np.random.default_rng(11).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i, x in enumerate(rgb):
        Image.fromarray(x).save(tmp_path / f"{i}.png")
    build_lab_shard(tmp_path, [f"{i}.png" for i in range(3)], 32, tmp_path / "lab.h5")
    with h5py.File(tmp_path / "lab.h5", "r") as f:
        assert f["L"].dtype == np.uint8 and f["L"].compression is None           # the loader's array: raw
        assert f["ab"].dtype == np.int8 and f["ab"].compression == "szip"        # LAB_COMPRESSION
        assert f["ab"].shape == (3, 2, 32, 32) and f.attrs["lab_layout"] == "L uint8 x2.55, ab int8"
    L, ab = lab_planes(rgb)
    np.testing.assert_allclose(decode_L(read_array(tmp_path / "lab.h5", "L")), L, atol=0.5 / L_SCALE + 1e-4)
    np.testing.assert_allclose(decode_ab(read_array(tmp_path / "lab.h5", "ab")), np.moveaxis(ab, 0, 1),
                               atol=0.5 + 1e-3)


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown compression 'zstd'"):
        write_shard(tmp_path / "x.h5", {"L": np.zeros((1, 8, 8), np.int16)}, {}, compression="zstd")
    assert list(tmp_path.iterdir()) == []


def test_lab_planes_work_arrays_are_reused_but_never_returned_or_shared():
    rng = np.random.default_rng(10)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
              [(48, 48, 3), (48, 48, 3), (2, 16, 20, 3), (48, 48, 3)]]
    expected = [rgb_to_lab(x) for x in images]
    results = [lab_planes(x) for x in images]                      # alternating sizes
    for x, (L, ab), ref in zip(images, results, expected):         # earlier results untouched
        np.testing.assert_array_equal(np.stack([L, ab[0], ab[1]], -1), ref)
    np.testing.assert_allclose(expected[0], rgb2lab(images[0]), atol=2e-3)

    import threading                                               # work arrays are per thread
    failures = []
    pair = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)]

    def convert(x, ref):
        for _ in range(40):
            L, ab = lab_planes(x)
            if not np.array_equal(np.stack([L, ab[0], ab[1]], -1), ref):
                failures.append(1)
    threads = [threading.Thread(target=convert, args=(x, rgb_to_lab(x))) for x in pair]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_shard_bytes_do_not_depend_on_what_the_reused_buffer_held(tmp_path):
    import pipeline.shards
    arrays = {"L": np.arange(4 * 32 * 32, dtype=np.int16).reshape(4, 32, 32), "paths": list("abcd"),
              "sizes": np.ones((4, 2), np.int32)}
    pipeline.shards._SPARE.buffer = np.empty(0, np.uint8)
    write_shard(tmp_path / "fresh.h5", arrays, {"n_images": 4}, compression=None)
    pipeline.shards._SPARE.buffer = np.full(1 << 22, 0xAB, np.uint8)   # a bigger shard's leftovers
    write_shard(tmp_path / "reused.h5", arrays, {"n_images": 4}, compression=None)
    assert (tmp_path / "fresh.h5").read_bytes() == (tmp_path / "reused.h5").read_bytes()


def test_a_failed_shard_write_does_not_break_the_next_one(tmp_path, monkeypatch):
    """The failing writer keeps a view of the in-memory file (as an exception's traceback
    can); the next, larger shard must still be written and read back."""
    import errno

    import pipeline.shards
    kept = []

    class Full:
        def __init__(self, path, mode):
            self.f = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            kept.append(data)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    small = {"L": np.ones((2, 16, 16), np.int16)}
    monkeypatch.setattr(pipeline.shards, "open", Full, raising=False)
    with pytest.raises(OSError, match="cannot write .*a.h5: No space left"):
        write_shard(tmp_path / "a.h5", small, {}, compression=None)
    monkeypatch.undo()
    big = {"L": np.arange(8 * 512 * 512, dtype=np.int16).reshape(8, 512, 512) % 1000}
    write_shard(tmp_path / "b.h5", big, {"n_images": 8}, compression=None)
    np.testing.assert_array_equal(read_array(tmp_path / "b.h5", "L"), big["L"])
    assert kept and sorted(p.name for p in tmp_path.iterdir()) == ["b.h5"]
