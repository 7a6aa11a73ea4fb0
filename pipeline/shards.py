"""HDF5 shard I/O.

Every array is chunked one image per chunk (so a loader reads one image with one
read), compressed as the writer chooses (COMPRESSION: label shards lzf, Lab shards
[colorize] lab_compression, none by default), and checksummed (fletcher32: a
flipped byte is an error on read, never silently wrong data).  Metadata lives in
attributes, dicts/lists stored as JSON strings.

Lab shard:    L (N, S, S) lightness 0..100 and ab (N, 2, S, S), both int16 fixed point
              (see LAB_SCALE, encode_lab, decode_lab);
              paths (N,) str relative to the dataset root; sizes (N, 2) int32
              original (width, height); fingerprints (N,) str.
Label shard:  posteriors (N, K, s, s) float16, s = S // lowpass; paths (N,).
"""
import json

import h5py
import numpy as np

from .atomic import atomic_path

_STR = h5py.string_dtype("utf-8")

#: Lab shards hold L, a and b as int16 fixed point, value = round(Lab * LAB_SCALE): steps of
#: 1/256, 16x finer than float16 at L = 100 in the same 2 bytes, and numpy converts int16 <->
#: float32 with SIMD code, ~20x faster than its scalar float16 casts (0.005 vs 0.12 ms per
#: 256x256 plane here).  sRGB colours have |a|, |b| < 110, so nothing is clipped.
LAB_SCALE = 256

#: write_shard's compression choices -> h5py filter settings.  Shuffle helps the LZ
#: compressors on multi-byte values; szip (libaec) does its own nearest-neighbour prediction.
COMPRESSION = {None: {}, "none": {},
               "lzf": {"compression": "lzf", "shuffle": True},
               "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
               "szip": {"compression": "szip", "compression_opts": ("nn", 16)}}


def encode_lab(x) -> np.ndarray:
    """Float Lab values -> int16 fixed point (rounded; clipped to the int16 range).
    build_lab_shard gets the same values straight from color.lab_planes(scale=LAB_SCALE)."""
    q = np.multiply(x, LAB_SCALE, dtype=np.float32)
    np.rint(q, out=q)
    np.clip(q, -32768, 32767, out=q)
    return q.astype(np.int16)


def decode_lab(q) -> np.ndarray:
    """int16 fixed point read from a Lab shard -> float32 Lab values."""
    q = np.asarray(q)
    if q.dtype != np.int16:
        raise ShardError(f"Lab arrays must be int16 fixed point, got {q.dtype} "
                         "(a shard from an older version? delete it and rerun)")
    return np.multiply(q, np.float32(1 / LAB_SCALE), dtype=np.float32)


class ShardError(RuntimeError):
    """A shard is unreadable or fails its checksum; the message names the file."""


def _as_attr(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def write_shard(path, arrays: dict, attrs: dict, compression="lzf") -> None:
    """Atomically write `arrays` (first axis = image) and `attrs` to an HDF5 file.

    compression: a key of COMPRESSION (None / "none" = stored as is).  The file is built
    in memory and written with plain file I/O: a full disk or a read-only folder is then
    an ordinary OSError naming `path`.  (HDF5 writing to disk itself, or through a Python
    file object, leaves the library in a state that crashes the process after a failed
    write: tests/test_faults.py.  Building in memory costs one extra copy, ~0.4 ms per
    256 px image.)
    """
    if compression not in COMPRESSION:
        raise ValueError(f"unknown compression {compression!r}; choose one of "
                         f"{sorted(k for k in COMPRESSION if k)}")
    # The in-memory file grows in block_size steps, each a realloc + copy: one block
    # for the whole shard avoids copying a 40 MB shard ~10 times.
    size = sum(v.nbytes for v in arrays.values() if isinstance(v, np.ndarray))
    block = max(1 << 20, size + (1 << 20))
    with atomic_path(path) as tmp:
        with h5py.File(tmp.name, "w", driver="core", backing_store=False, block_size=block) as f:
            for name, value in arrays.items():
                value = np.asarray(value) if not isinstance(value, list) else value
                if isinstance(value, list) or value.dtype.kind in "OUS":
                    f.create_dataset(name, data=np.asarray(value, dtype=object), dtype=_STR)
                    continue
                if value.shape[0] == 0 or value.ndim == 1:
                    f.create_dataset(name, data=value)
                    continue
                # rows of a few numbers (sizes) are not worth a filter (szip refuses them)
                filters = COMPRESSION[compression] if np.prod(value.shape[1:]) >= 64 else {}
                f.create_dataset(name, data=value, chunks=(1,) + value.shape[1:],
                                 fletcher32=True, **filters)
            for key, value in attrs.items():
                f.attrs[key] = _as_attr(value)
            f.flush()
            image = f.id.get_file_image()
        with open(tmp, "wb") as out:
            out.write(image)


def read_attrs(path) -> dict:
    """All attributes of a shard, JSON strings decoded."""
    try:
        with h5py.File(path, "r") as f:
            out = {}
            for key, value in f.attrs.items():
                if isinstance(value, str) and value[:1] in ("[", "{"):
                    value = json.loads(value)
                elif isinstance(value, np.generic):
                    value = value.item()
                out[key] = value
            return out
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e}") from None


def read_array(path, name, index=slice(None)):
    """One array (or a slice of it) from a shard; checksum failures name the file."""
    try:
        with h5py.File(path, "r") as f:
            return _read(f, name, index, path)
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e}") from None


def read_rows(path, name, rows) -> list:
    """Rows `rows` of one array with the file opened once; checksum failures name the file."""
    try:
        with h5py.File(path, "r") as f:
            return [_read(f, name, i, path) for i in rows]
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e}") from None


def _read(f, name, index, path):
    ds = f[name]
    try:
        value = ds[index]
    except OSError as e:
        raise ShardError(f"corrupt shard {path} (dataset {name}): {e}") from None
    if ds.dtype == _STR or h5py.check_string_dtype(ds.dtype):
        value = np.asarray([v.decode() if isinstance(v, bytes) else v for v in np.atleast_1d(value)])
    return value


def verify_shard(path) -> None:
    """Read every chunk; raise ShardError naming the file if any checksum fails."""
    try:
        with h5py.File(path, "r") as f:
            for name in f:
                _read(f, name, slice(None), path)
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e}") from None
