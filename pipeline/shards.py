"""HDF5 shard I/O.

Every array is chunked one image per chunk (so a loader reads one image with one
read), compressed as the writer chooses (COMPRESSION: label shards lzf, the Lab shards' a/b
[colorize] lab_compression, szip by default), and checksummed (fletcher32: a
flipped byte is an error on read, never silently wrong data).  Metadata lives in
attributes, dicts/lists stored as JSON strings.

Lab shard:    L (N, S, S) uint8 lightness and ab (N, 2, S, S) int8 a/b (see LAB_LAYOUT,
              encode_lab, decode_L, decode_ab); ab_sums (N, 2, S/8, S/8) int16, a/b summed
              over 8 x 8 blocks, for the label stage (labels.SUM_BLOCK; absent from shards
              written before, and when S is not a multiple of 8);
              paths (N,) str relative to the dataset root; sizes (N, 2) int32
              original (width, height); fingerprints (N,) str.
Strings are stored as fixed-length UTF-8 bytes, checksummed too (_create_strings).
Label shard:  posteriors (N, K, s, s) float16, s = S // lowpass; paths (N,).
"""
import json
import threading

import h5py
import numpy as np

from .atomic import atomic_path

_STR = h5py.string_dtype("utf-8")

#: Lab shards store what the photo holds at the network's size, no more (LabShard version 5;
#: the int16 planes before held Lab x 256):
#:   L   uint8, round(L * L_SCALE): steps of 100/255 = 0.39 (8 bits, as the JPEG's luma);
#:   ab  int8, round(a) and round(b): steps of 1; sRGB colours have |a|, |b| < 110.
#: 196,608 bytes per 256 px image as arrays.  The a/b planes are szip-compressed by default
#: ([colorize] lab_compression: ~55-70 KB of their 131 KB); L stays raw, as the loader reads
#: it for every sample.  Full resolution, because 4:2:0 chroma (a/b as 2 x 2 block means)
#: made the truth smoother and moved Evaluate's gray / oracle PSNR by +0.15 to +1.1 dB
#: (bench/lab_format.py measures this layout against the int16 planes; docs/scaling.md).
L_SCALE = 255 / 100
#: Written to every Lab shard's attrs; readers check the arrays' dtypes (decode_L, decode_ab).
LAB_LAYOUT = "L uint8 x2.55, ab int8"
#: Bytes per pixel of a Lab shard's arrays, uncompressed: uint8 L + int8 a + int8 b.
LAB_BYTES_PER_PIXEL = 3
#: The a/b planes' compression unless [colorize] lab_compression says otherwise.
LAB_COMPRESSION = "szip"

#: write_shard's compression choices -> h5py filter settings.  Shuffle helps the LZ
#: compressors on multi-byte values; szip (libaec) does its own nearest-neighbour prediction
#: (blocks of 32 values: on int8 a/b ~20 % faster to write than 16, for 5 % more bytes).
COMPRESSION = {None: {}, "none": {},
               "lzf": {"compression": "lzf", "shuffle": True},
               "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
               "szip": {"compression": "szip", "compression_opts": ("nn", 32)}}


def encode_lab(L, ab=None):
    """Float L (...) and ab (..., 2, ...) -> the Lab shard's (uint8 L, int8 ab or None).
    build_lab_shard gets the same values straight from color.lab_planes(L_scale=L_SCALE);
    this is for other writers (tests, benches)."""
    L = np.clip(np.rint(np.multiply(L, L_SCALE, dtype=np.float32)), 0, 255).astype(np.uint8)
    return L, None if ab is None else np.clip(np.rint(np.asarray(ab, np.float32)), -128, 127).astype(np.int8)


def _checked(q, dtype, name):
    q = np.asarray(q)
    if q.dtype != dtype:
        raise ShardError(f"Lab shard array {name} must be {np.dtype(dtype)}, got {q.dtype} "
                         "(a shard from an older version? delete it and rerun)")
    return q


def decode_L(q) -> np.ndarray:
    """uint8 L read from a Lab shard -> float32 lightness in [0, 100]."""
    return np.multiply(_checked(q, np.uint8, "L"), np.float32(1 / L_SCALE), dtype=np.float32)


def check_ab(q) -> np.ndarray:
    """int8 a/b read from a Lab shard, checked (the integers, for labels.lowpass_ab's exact sums)."""
    return _checked(q, np.int8, "ab")


def check_ab_sums(q) -> np.ndarray:
    """int16 a/b block sums (ab_sums, see labels.SUM_BLOCK) read from a Lab shard, checked."""
    return _checked(q, np.int16, "ab_sums")


def decode_ab(q) -> np.ndarray:
    """int8 a/b read from a Lab shard -> float32 a/b."""
    return check_ab(q).astype(np.float32)


#: What to do about a shard that fails its checksum: the pipeline's outputs are signed by
#: their inputs, so a deleted shard is rebuilt as it was and a run that read it resumes.
REBUILD_ADVICE = "delete that file and rerun the same command: it is rebuilt"


class ShardError(RuntimeError):
    """A shard is unreadable or fails its checksum; the message names the file, in one line.

    A DataLoader worker's exception reaches the main process as its type and its formatted
    traceback only: torch re-raises ShardError(message=<"Caught ShardError in DataLoader
    worker process 0. Original Traceback ...">) for a class with a `message` attribute.
    That message is cut back to the worker's own one line (worker_message)."""
    message = "a shard is unreadable"       # class attribute: makes torch pass message=

    def __init__(self, *args, message=None):
        super().__init__(*(args if message is None else (worker_message(message),)))


def corrupt_shard(path, where: str, error: Exception) -> ShardError:
    """The error for a shard whose stored bytes fail to read (a checksum): names the file,
    the array (`where`), HDF5's reason, and what to do, in one line."""
    return ShardError(f"corrupt shard {path} ({where}): {' '.join(str(error).split())}; {REBUILD_ADVICE}")


def worker_message(text: str) -> str:
    """The ShardError message at the end of a worker's formatted traceback (the text after
    the last "ShardError: "), as one line; `text` itself (one line) when it holds none."""
    head, sep, tail = str(text).rpartition("ShardError: ")
    return " ".join((tail if sep else text).split())


def _as_attr(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


class _MemoryFile:
    """A file in a uint8 array, for h5py's file-object driver: HDF5 builds the shard here,
    then write_shard stores it with one plain write.  Writes never fail (short of a
    MemoryError), so HDF5 never sees a failed write.  The array is reused from shard to
    shard; a gap HDF5 seeks over is zeroed, so a file holds no bytes of an earlier one."""

    def __init__(self, buffer: np.ndarray, capacity: int):
        self.buffer, self.pos, self.size = buffer, 0, 0
        self._reserve(capacity)

    def _reserve(self, end):
        """Grow the array to hold `end` bytes: a new array (never resized in place, so a
        view still held elsewhere, say by an exception's traceback, stays valid)."""
        if end > len(self.buffer):
            bigger = np.empty(max(end, len(self.buffer) * 3 // 2), np.uint8)
            bigger[:self.size] = self.buffer[:self.size]
            self.buffer = bigger

    def seek(self, offset, whence=0):
        self.pos = offset + (0, self.pos, self.size)[whence]
        return self.pos

    def tell(self):
        return self.pos

    def truncate(self, size=None):
        size = self.pos if size is None else size
        self._reserve(size)
        self.buffer[self.size:size] = 0
        self.size = size
        return size

    def write(self, data):
        data = np.frombuffer(data, np.uint8)
        if self.pos > self.size:
            self.truncate(self.pos)
        end = self.pos + len(data)
        self._reserve(end)
        self.buffer[self.pos:end] = data
        self.pos, self.size = end, max(self.size, end)
        return len(data)

    def read(self, n=-1):
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        data = self.buffer[self.pos:end].tobytes()
        self.pos += len(data)
        return data

    def flush(self):
        pass


# The array of the last _MemoryFile, per thread: a fresh 40 MB array per shard would take
# its page faults again each time (~0.3 ms per 256 px image).
_SPARE = threading.local()


def write_shard(path, arrays: dict, attrs: dict, compression="lzf") -> None:
    """Atomically write `arrays` (first axis = image) and `attrs` to an HDF5 file.

    compression: a key of COMPRESSION (None / "none" = stored as is) for every array, or a
    dict {array name: key} (arrays it does not name are stored as is).  The file is built
    in memory (_MemoryFile) and written with one plain file write: a full disk or a
    read-only folder is then an ordinary OSError naming `path`.  (HDF5 writing to disk
    itself, or through a file object that fails, leaves the library in a state that
    crashes the process after a failed write: tests/test_faults.py.)
    """
    per_array = compression if isinstance(compression, dict) else dict.fromkeys(arrays, compression)
    for choice in per_array.values():
        if choice not in COMPRESSION:
            raise ValueError(f"unknown compression {choice!r}; choose one of "
                             f"{sorted(k for k in COMPRESSION if k)}")
    size = sum(v.nbytes for v in arrays.values() if isinstance(v, np.ndarray))
    image = _MemoryFile(getattr(_SPARE, "buffer", np.empty(0, np.uint8)), size + (1 << 20))
    with atomic_path(path) as tmp:
        with h5py.File(image, "w") as f:
            for name, value in arrays.items():
                _create_dataset(f, name, value, per_array.get(name))
            for key, value in attrs.items():
                f.attrs[key] = _as_attr(value)
        _SPARE.buffer = image.buffer
        with open(tmp, "wb") as out:
            out.write(image.buffer[:image.size])


def _create_strings(f, name, values):
    """Strings as fixed-length UTF-8 bytes in one chunk with a fletcher32 checksum, like every
    other array: HDF5 checksums no variable-length string (those live in its global heap, and
    a flipped byte turned chelsea.png into bhelsea.png unnoticed).  _read decodes them; shards
    written before (variable-length strings, unchecked) still read the same."""
    data = np.array([str(v).encode() for v in values], dtype=bytes)    # |S<longest>, |S1 for none
    f.create_dataset(name, data=data, **({"chunks": data.shape, "fletcher32": True} if len(data) else {}))


def _create_dataset(f, name, value, compression):
    value = np.asarray(value) if not isinstance(value, list) else value
    if isinstance(value, list) or value.dtype.kind in "OUS":
        _create_strings(f, name, value)
    elif value.shape[0] == 0 or value.ndim == 1:
        f.create_dataset(name, data=value)
    else:
        # rows of a few numbers (sizes) are not worth a filter (szip refuses them)
        filters = COMPRESSION[compression] if np.prod(value.shape[1:]) >= 64 else {}
        f.create_dataset(name, data=value, chunks=(1,) + value.shape[1:],
                         fletcher32=True, **filters)


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
        raise corrupt_shard(path, f"dataset {name}", e) from None
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
