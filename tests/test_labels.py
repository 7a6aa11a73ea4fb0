"""How far pipeline.labels.lowpass_ab (block mean + low-resolution Gaussian) is from the
full-resolution sigma-f Gaussian it stands for, measured on photos (its docstring quotes this)."""
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from pipeline.color import rgb_to_lab
from pipeline.labels import lowpass_ab


def photo_ab(name, size=256):
    """(2, size, size) float32 a/b planes of the centre square of a bundled skimage photo."""
    from skimage import data
    im = Image.fromarray(getattr(data, name)())
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((size, size), Image.BILINEAR)
    return np.moveaxis(rgb_to_lab(np.asarray(im))[..., 1:], -1, 0).astype(np.float32)


def full_resolution_lowpass(ab, f):
    """Gaussian blur of sigma f at full resolution, sampled at the centre of each f x f block
    (between the two middle pixels of an even block: the mean of those 2 x 2)."""
    g = gaussian_filter(ab.astype(np.float64), (0, f, f), mode="reflect")
    c = f // 2
    g = (g[:, c - 1::f] + g[:, c::f]) / 2
    return (g[:, :, c - 1::f] + g[:, :, c::f]) / 2


@pytest.mark.parametrize("f", [4, 8])
def test_lowpass_matches_the_full_resolution_blur_within_the_documented_error(f):
    # measured (256 px, ab units): max |diff| 1.28 / 0.72 / 1.10 (f = 4) and 1.52 / 0.78 / 0.93
    # (f = 8) on astronaut / coffee / rocket, mean <= 0.10; the largest at sharp colour edges.
    # Without the low-resolution sigma correction (sigma_low = 1) the mean is 0.16-0.18 at f = 8.
    for name in ("astronaut", "coffee", "rocket"):
        ab = photo_ab(name)
        diff = np.abs(lowpass_ab(ab, f) - full_resolution_lowpass(ab, f))
        assert diff.max() < 2.0, (name, diff.max())
        assert diff.mean() < 0.12, (name, diff.mean())


def test_labels_from_the_lab_shards_block_sums_equal_labels_from_their_a_b(tmp_path, monkeypatch):
    """A Lab shard keeps its a/b summed over SUM_BLOCK blocks (ab_sums); the label stage reads
    those when the low-pass factor is a multiple of the block, and the labels are those of a
    shard without them (written before they existed) bit for bit."""
    import h5py
    import pipeline.preprocess as pre
    from conftest import write_photo
    from pipeline.gmm import uniform_grid
    from pipeline.labels import SUM_BLOCK, block_sums
    from pipeline.shards import read_array, read_attrs
    files = [f"p{i}.png" for i in range(5)]
    for i, f in enumerate(files):
        write_photo(tmp_path / f, seed=i, size=(96, 80))
    pre.build_lab_shard(tmp_path, files, 64, tmp_path / "lab.h5")
    ab = read_array(tmp_path / "lab.h5", "ab")
    assert read_attrs(tmp_path / "lab.h5")["ab_sums_block"] == SUM_BLOCK
    np.testing.assert_array_equal(read_array(tmp_path / "lab.h5", "ab_sums"), block_sums(ab, SUM_BLOCK))
    with h5py.File(tmp_path / "lab.h5") as src, h5py.File(tmp_path / "old.h5", "w") as old:
        for name in src:
            if name != "ab_sums":
                src.copy(name, old)
        old.attrs.update({k: v for k, v in src.attrs.items() if k != "ab_sums_block"})
    read = []
    real_read = pre.read_array
    monkeypatch.setattr(pre, "read_array", lambda path, name, *a: read.append(name) or real_read(path, name, *a))
    gmm = uniform_grid(9)
    for lowpass, reads in ((8, "ab_sums"), (16, "ab_sums"), (4, "ab"), (1, "ab")):
        read.clear()
        pre.build_label_shard(tmp_path / "lab.h5", gmm, lowpass, tmp_path / f"new{lowpass}.h5")
        assert reads in read and ({"ab", "ab_sums"} - {reads}).isdisjoint(read)
        pre.build_label_shard(tmp_path / "old.h5", gmm, lowpass, tmp_path / f"old{lowpass}.h5")
        new, old = (read_array(tmp_path / f"{w}{lowpass}.h5", "posteriors") for w in ("new", "old"))
        assert new.shape == (5, 9, 64 // lowpass, 64 // lowpass)
        np.testing.assert_array_equal(new, old)
    with pytest.raises(ValueError, match="not a multiple of the summed blocks"):
        lowpass_ab(block_sums(ab, SUM_BLOCK), 4, summed=SUM_BLOCK)
