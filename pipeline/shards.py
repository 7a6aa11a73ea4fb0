"""HDF5 shard I/O.

Every array is chunked one image per chunk (so a loader reads one image with one
decompression), shuffled + compressed, and checksummed (fletcher32: a flipped
byte is an error on read, never silently wrong data).  Metadata lives in
attributes, dicts/lists stored as JSON strings.

Lab shard:    L (N, S, S) float16 lightness 0..100; ab (N, 2, S, S) float16;
              paths (N,) str relative to the dataset root; sizes (N, 2) int32
              original (width, height); fingerprints (N,) str.
Label shard:  posteriors (N, K, s, s) float16, s = S // lowpass; paths (N,).
"""
import json

import h5py
import numpy as np

from .atomic import atomic_path

_STR = h5py.string_dtype("utf-8")


class ShardError(RuntimeError):
    """A shard is unreadable or fails its checksum; the message names the file."""


def _as_attr(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def write_shard(path, arrays: dict, attrs: dict, compression="lzf") -> None:
    """Atomically write `arrays` (first axis = image) and `attrs` to an HDF5 file.

    The file is built in memory and written with plain file I/O: a full disk or a
    read-only folder is then an ordinary OSError naming `path` (HDF5 writing to disk
    itself leaves the library in a state that segfaults the process at exit).
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp.name, "w", driver="core", backing_store=False, block_size=1 << 22) as f:
            for name, value in arrays.items():
                value = np.asarray(value) if not isinstance(value, list) else value
                if isinstance(value, list) or value.dtype.kind in "OUS":
                    f.create_dataset(name, data=np.asarray(value, dtype=object), dtype=_STR)
                    continue
                if value.shape[0] == 0 or value.ndim == 1:
                    f.create_dataset(name, data=value)
                    continue
                f.create_dataset(name, data=value, chunks=(1,) + value.shape[1:],
                                 compression=compression, shuffle=True, fletcher32=True)
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
