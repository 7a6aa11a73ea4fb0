"""A torch Dataset over precomputed Lab + label shards, and its DataLoader.

Each item is read straight from HDF5 (one chunk per image, so one
decompression per array): nothing is recomputed per sample, unlike the
original, which decoded, converted and ran the GMM for every sample.

Files are opened lazily, per process: the Dataset holds only paths and an
index until the first __getitem__, so it pickles into DataLoader workers, and
a worker that inherited open handles through fork reopens its own (handles are
keyed by pid; an h5py handle must not be shared across fork).

Random horizontal flips are drawn from torch's RNG, and are applied to input
and target together.  With `make_loader` every sample also carries its own
seed drawn from the epoch's generator, so the flips of an epoch depend only on
(seed, epoch) -- not on the number of workers, and not on where a resumed run
restarted inside the epoch.

The shuffled order is shard-aware (see shard_local_order): each sample is read
near its shard's place in a shuffled shard order, so a process keeps a bounded
set of shard files open and opens each about once per epoch, instead of opening
a file for almost every read once there are more shards than open handles.
"""
import hashlib
import os
from collections import OrderedDict

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.shards import ShardError, corrupt_shard, decode_ab, decode_L, read_array

from train.stop import quiet_worker   # absolute: bench/many_shards.py loads this file alone

#: Shards a shuffled epoch reads from at a time (EpochSampler, shard_local_order).  Larger mixes
#: each stretch of samples over more shards, at the cost of more open files per process.
SHARD_WINDOW = 32

#: Open HDF5 files kept per process (least recently used closed first).  Between two reads of
#: one shard the shard-local order reads at most 2 * SHARD_WINDOW - 2 other shards, two files
#: each (Lab, labels): with 2 * 2 * SHARD_WINDOW files no shard is closed while it still has
#: samples to come, so each file is opened once per epoch (twice for the few shards whose
#: window wraps around the epoch's end).
_MAX_OPEN = 4 * SHARD_WINDOW


def _shape(path, name):
    try:
        with h5py.File(path, "r") as f:
            if name not in f:
                raise ShardError(f"shard {path} has no dataset {name!r}")
            return tuple(f[name].shape)
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e}") from None


_FAPL = []


def _read_fapl():
    """The file-access properties every shard is opened with (made once per process): no
    chunk cache (an epoch reads each chunk, one image, once, so HDF5's default 1 MB per
    dataset only adds a copy and memory), weak close degree (the file closes when its last
    object goes)."""
    if not _FAPL:
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_cache(0, 521, 0, 0.75)              # (metadata elements: unused, slots, bytes, w0)
        fapl.set_fclose_degree(h5py.h5f.CLOSE_WEAK)
        _FAPL.append(fapl)
    return _FAPL[0]


_LAYOUTS = {}


def _memory_layout(dtype, row_shape):
    """(HDF5 memory type, dataspace) of one row: made once per dtype and shape (per read,
    h5py would make the type each time, ~30 us for float16)."""
    key = (dtype.str, row_shape)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = (h5py.h5t.py_create(dtype), h5py.h5s.create_simple((1,) + row_shape))
    return _LAYOUTS[key]


class _RowReader:
    """One dataset of an open shard, read one row (image) at a time through h5py's low-level
    API.  Opening a shard is most of what the many-shard order costs over one file, and
    h5py's File, its dataset lookup and its first slice cost ~0.6 ms per file here; the
    low-level open, lookup and read with a kept selection ~0.26 ms (bench/many_shards.py).
    Checksums and filters apply as in any HDF5 read: a flipped byte is an OSError."""

    def __init__(self, fid, name: str, path):
        try:
            self.id = h5py.h5d.open(fid, name.encode())
        except KeyError:
            raise ShardError(f"shard {path} has no dataset {name!r}") from None
        self.file_space = self.id.get_space()
        self.row_shape, self.dtype = self.file_space.shape[1:], self.id.dtype
        self.mem_type, self.mem_space = _memory_layout(self.dtype, self.row_shape)

    def read(self, row: int) -> np.ndarray:
        """Row `row` as a new array (the caller keeps it: a batch is collated later)."""
        out = np.empty((1,) + self.row_shape, self.dtype)
        self.file_space.select_hyperslab((row,) + (0,) * len(self.row_shape), (1,) + self.row_shape)
        self.id.read(self.mem_space, self.file_space, out, self.mem_type)
        return out[0]


class ShardDataset(Dataset):
    """All images of the given (lab shard, label shard) pairs, in order.

    __getitem__(i) -> (x, target):
      x       float32 (1, S, S): lightness L in [0, 100] (the Colorizer centres it)
      target  float32 (K, s, s): cluster posteriors at the target resolution
    `i` may also be a pair (i, seed) (as yielded by EpochSampler): the flip is
    then drawn from a generator seeded with `seed` instead of torch's global RNG.
    """

    def __init__(self, pairs, flip: bool):
        self.pairs = [(str(lab), str(label)) for lab, label in pairs]
        self.flip = bool(flip)
        shard_ids, rows = [], []
        self.image_size = self.target_size = self.n_classes = None
        for i, (lab, label) in enumerate(self.pairs):
            l_shape, p_shape = _shape(lab, "L"), _shape(label, "posteriors")
            if l_shape[0] != p_shape[0]:
                raise ShardError(f"label shard {label} has {p_shape[0]} images but its Lab shard "
                                 f"{lab} has {l_shape[0]}")
            if l_shape[0] == 0:
                continue                                  # every file of this shard was skipped
            sizes = (l_shape[1], p_shape[2], p_shape[1])
            if self.image_size is None:
                self.image_size, self.target_size, self.n_classes = sizes
            elif sizes != (self.image_size, self.target_size, self.n_classes):
                raise ShardError(f"shard {label}: image/target size, K = {sizes}, but earlier shards "
                                 f"have {(self.image_size, self.target_size, self.n_classes)}")
            shard_ids.append(np.full(l_shape[0], i, dtype=np.int32))
            rows.append(np.arange(l_shape[0], dtype=np.int32))
        self._shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
        self._row = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        self._files = OrderedDict()
        self._datasets = {}                                # (path, name) -> h5py dataset of an open file
        self._pid = None
        self._inherited = []

    def __len__(self):
        return len(self._shard)

    @property
    def shard_ids(self) -> np.ndarray:
        """(N,) int32: which shard (index into `pairs`) each image is in; for the epoch order."""
        return self._shard

    # -- lazy per-process HDF5 handles ---------------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_pid"], state["_inherited"] = OrderedDict(), None, []
        state["_datasets"] = {}
        return state

    def _file(self, path):
        if self._pid != os.getpid():                      # new process (fork or spawn): own handles
            # Handles inherited through fork are abandoned, not closed: closing them here
            # would act on HDF5 state shared with the parent.  Worker processes end with
            # os._exit, so they are never finalised.
            self._inherited.append(self._files)
            self._files, self._pid = OrderedDict(), os.getpid()
            self._datasets = {}
        f = self._files.get(path)
        if f is None:
            try:
                f = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=_read_fapl())
            except OSError as e:
                raise ShardError(f"cannot read shard {path}: {e}") from None
            self._files[path] = f
            if len(self._files) > _MAX_OPEN:
                # Dropping the last references closes the file (weak close degree, _read_fapl).
                # File.close() would first scan every open HDF5 object of the process: ~0.3 ms
                # with _MAX_OPEN files open vs ~0.05 ms.
                old, _ = self._files.popitem(last=False)
                self._datasets = {k: v for k, v in self._datasets.items() if k[0] != old}
        else:
            self._files.move_to_end(path)
        return f

    def _read(self, which, name, index):
        shard, row = int(self._shard[index]), int(self._row[index])
        path = self.pairs[shard][which]
        try:
            # the dataset objects of open files are kept: looking one up costs more than a read
            ds = self._datasets.get((path, name)) if self._pid == os.getpid() else None
            if ds is None:
                ds = self._datasets[(path, name)] = _RowReader(self._file(path), name, path)
            return ds.read(row)
        except OSError as e:
            raise corrupt_shard(path, f"dataset {name}, row {row}", e) from None

    def close(self):
        self._datasets = {}
        for f in self._files.values():
            f.close()
        self._files.clear()

    # -- items ---------------------------------------------------------------------------
    def __getitem__(self, item):
        index, seed = item if isinstance(item, (tuple, list)) else (item, None)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        x = torch.from_numpy(decode_L(self._read(0, "L", index))).unsqueeze(0)
        # torch casts float16 with SIMD code; numpy's astype is scalar (~4x slower here)
        target = torch.from_numpy(self._read(1, "posteriors", index)).float()
        if self.flip:
            gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            if torch.rand((), generator=gen) < 0.5:
                x, target = x.flip(-1), target.flip(-1)
        return x.contiguous(), target.contiguous()

    def get_visual(self, index) -> dict:
        """Unflipped raw arrays of image `index` for visualisation:
        L (S, S), ab (2, S, S), posteriors (K, s, s) as float32, and its path."""
        shard, row = int(self._shard[index]), int(self._row[index])
        return {"L": decode_L(self._read(0, "L", index)),
                "ab": decode_ab(self._read(0, "ab", index)),
                "posteriors": self._read(1, "posteriors", index).astype(np.float32),
                "path": str(read_array(self.pairs[shard][0], "paths", row)[0])}


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for one epoch's order and per-sample seeds."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


def shard_local_order(shards, window: int, gen: torch.Generator) -> torch.Tensor:
    """A shuffled order of len(shards) samples that reads few shards at a time.

    shards: (N,) shard id of each sample.  The shards are put in a random order (rank r =
    0..M-1) and each sample gets the key r + window * u, u ~ U[0, 1), on a circle of
    length M (keys mod M); the order sorts the keys.  So a shard's samples are spread
    uniformly, in random order, over `window` shard-lengths of the epoch, interleaved with
    those of the window - 1 shards before and after it in the shard order:
      - at any point at most `window` shards have samples both before and after it, and
        between two reads of one shard at most 2 * window - 2 other shards are read;
      - a run of R consecutive samples touches about window + R / (mean shard size) shards;
      - with M <= window shards it is a uniform random permutation.
    """
    shards = torch.as_tensor(np.asarray(shards), dtype=torch.int64)
    ids, which = torch.unique(shards, return_inverse=True)          # dense shard numbers 0..M-1
    m = len(ids)
    if m == 0:
        return torch.zeros(0, dtype=torch.int64)
    rank = torch.randperm(m, generator=gen).double()
    spread = min(int(window), m) * torch.rand(len(shards), generator=gen, dtype=torch.float64)
    return torch.argsort(torch.remainder(rank[which] + spread, m), stable=True)


class EpochSampler(Sampler):
    """Yields (index, sample_seed) for one epoch; the order (shuffled or not) and the seeds
    are a function of (seed, epoch) only.  set_epoch(e, start=k) makes the next iteration
    yield epoch e from its k-th sample on -- how a resumed run skips what it already did
    without reading those images.

    Shuffled order: with `shards` (each sample's shard id, e.g. ShardDataset.shard_ids)
    shard_local_order over `window` shards at a time, so the loader keeps few files open;
    without, a uniform random permutation (for datasets that are not sharded).

    Distributed (world_size > 1): every rank computes the same order and takes the
    positions start + rank, start + rank + world_size, ...  `start` counts samples of the
    whole world.  With global_batch (training, drop_last) the positions stop at the last
    whole global batch, so every rank yields the same number of samples, and per-rank
    batch k (global_batch / world_size samples) of all ranks together is exactly batch k
    of a single process with batch global_batch -- the same images, flips and seeds.
    Without global_batch (validation) the ranks split every position, some one more.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1,
                 global_batch=None, shards=None, window: int = SHARD_WINDOW):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if shards is not None and len(shards) != n:
            raise ValueError(f"{len(shards)} shard ids for {n} samples")
        if window < 1:
            raise ValueError(f"shard window must be >= 1, got {window}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.global_batch = int(rank), int(world_size), global_batch
        self.shards, self.window = shards, int(window)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = int(epoch), int(start)

    def _positions(self):
        end = self.n
        if self.global_batch:
            end = self.start + max(0, self.n - self.start) // self.global_batch * self.global_batch
        return range(self.start + self.rank, end, self.world_size)

    def __len__(self):
        return len(self._positions())

    def _order(self, gen):
        if not self.shuffle:
            return torch.arange(self.n)
        if self.shards is None:
            return torch.randperm(self.n, generator=gen)
        return shard_local_order(self.shards, self.window, gen)

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = self._order(gen)
        seeds = torch.randint(0, 2 ** 62, (self.n,), generator=gen)
        for i in self._positions():
            yield int(order[i]), int(seeds[i])


def _worker_init(worker_id):
    quiet_worker()           # ends with the main process, which alone decides on signals (train.stop)
    # torch seeds each worker with base_seed + worker_id (base_seed from the loader's
    # generator); derive numpy's and python's from it so any library drawing from them
    # inside a worker is reproducible too.
    import random
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, seed: int,
                pin_memory: bool = False, drop_last: bool = False, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """DataLoader with an EpochSampler (loader.sampler.set_epoch(e, start=k)), a seeded
    generator for the worker seeds and a worker_init_fn seeding numpy/random.  A dataset
    with `shard_ids` (ShardDataset) is shuffled shard-locally (shard_local_order).

    Workers are persistent: small datasets have epochs of one or two steps, and forking
    workers (and reopening shards) every epoch would cost more than the steps.  The sampler
    runs in the main process, so set_epoch still applies to every new epoch.

    Distributed: batch_size is per rank; the sampler gives this rank its share of each
    epoch (see EpochSampler), whole global batches of batch_size * world_size with drop_last."""
    generator = torch.Generator().manual_seed(int(seed))
    global_batch = batch_size * world_size if (drop_last and world_size > 1) else None
    sampler = EpochSampler(len(dataset), shuffle, int(seed), rank, world_size, global_batch,
                           shards=getattr(dataset, "shard_ids", None))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator,
                      worker_init_fn=_worker_init if workers > 0 else None,
                      persistent_workers=workers > 0)
