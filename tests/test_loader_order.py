"""The shard-local epoch order (train.data.shard_local_order via EpochSampler): a permutation
that depends only on (seed, epoch), resumes mid-epoch, reads few shards at a time and opens
each shard file about once per epoch -- but is not a plain sequential read."""
import h5py
import numpy as np
import torch

from pipeline.shards import encode_lab, write_shard
from train import data
from train.data import EpochSampler, ShardDataset, make_loader

W = 8                                                   # window used by the unit tests


def _ids(sizes):
    """Shard ids of samples laid out shard after shard, shard i holding sizes[i] samples."""
    return np.repeat(np.arange(len(sizes)), sizes)


def _order(shards, seed=0, epoch=0, start=0, window=W):
    s = EpochSampler(len(shards), True, seed, shards=shards, window=window)
    s.set_epoch(epoch, start)
    return [i for i, _ in s]


def _tiny_shards(folder, sizes, size=8):
    """Lab + label shards of sizes[i] random 8x8 images each, written by the project's writer."""
    rng = np.random.default_rng(0)
    pairs = []
    for i, n in enumerate(sizes):
        lab, label = folder / f"lab{i}.h5", folder / f"label{i}.h5"
        L_q, ab_q = encode_lab(rng.uniform(0, 100, (n, size, size)), np.zeros((n, 2, size, size)))
        write_shard(lab, {"L": L_q, "ab": ab_q,
                          "paths": [f"{i}-{j}.png" for j in range(n)]}, {})
        post = rng.dirichlet(np.ones(2), (n, size // 2, size // 2)).transpose(0, 3, 1, 2)
        write_shard(label, {"posteriors": post.astype(np.float16)}, {})
        pairs.append((lab, label))
    return pairs


def test_every_sample_once_and_order_depends_on_seed_and_epoch_only():
    shards = _ids(np.random.default_rng(1).integers(1, 10, 60))      # uneven shard sizes
    full = _order(shards, seed=3, epoch=2)
    assert sorted(full) == list(range(len(shards)))
    assert _order(shards, seed=3, epoch=2) == full
    assert _order(shards, seed=3, epoch=3) != full
    assert _order(shards, seed=4, epoch=2) != full
    assert sorted(_order(shards, seed=3, epoch=3)) == list(range(len(shards)))


def test_resume_and_rank_shares_are_slices_of_the_full_order():
    shards = _ids([5] * 40)
    full = _order(shards, epoch=1)
    for k in (0, 1, 37, 199, 200):
        assert _order(shards, epoch=1, start=k) == full[k:]
    shares = []
    for rank in range(2):
        s = EpochSampler(200, True, 0, rank=rank, world_size=2, global_batch=8, shards=shards, window=W)
        s.set_epoch(1, start=12)
        shares.append([i for i, _ in s])
    assert shares[0] == full[12::2][:len(shares[0])] and shares[1] == full[13::2][:len(shares[1])]
    assert len(shares[0]) == len(shares[1]) == (200 - 12) // 8 * 4


def test_unshuffled_order_is_plain():
    s = EpochSampler(7, False, 0, shards=_ids([3, 4]), window=W)
    assert [i for i, _ in s] == list(range(7))


def test_runs_of_consecutive_samples_touch_a_bounded_number_of_shards():
    m, n_shards = 5, 200
    shards = _ids([m] * n_shards)
    run = 4 * W * m                                    # samples per run

    def most_shards_in_a_run(order):
        ids = shards[np.asarray(order)]
        return max(len(set(ids[i:i + run])) for i in range(len(ids) - run + 1))

    bound = 2 * W + run // m                           # ~W + run / m expected
    for epoch in range(3):
        assert most_shards_in_a_run(_order(shards, epoch=epoch)) <= bound
    uniform = EpochSampler(len(shards), True, 0)       # the old order: no locality
    assert most_shards_in_a_run([i for i, _ in uniform]) > 2 * bound


def test_order_is_not_sequential_within_or_across_shards():
    m = 5
    shards = _ids([m] * 200)
    ids = shards[np.asarray(_order(shards))]
    same_next = np.mean(ids[1:] == ids[:-1])           # ~1/W; a sequential read: (m - 1) / m
    assert same_next < 0.3
    order = np.asarray(_order(shards))
    ascending = [np.all(np.diff(order[ids == s]) > 0) for s in range(200)]
    assert np.mean(ascending) < 0.1                    # rows in random order (1/120 by chance)


def test_few_shards_give_a_uniform_permutation():
    shards = _ids([2, 2, 2])                           # 3 shards <= window: plain shuffle
    first = np.bincount([_order(shards, epoch=e)[0] for e in range(1200)], minlength=6)
    assert first.min() > 200 - 4 * 13                  # 200 expected per index, sd ~13


def test_loader_opens_each_shard_file_about_once_per_epoch(tmp_path, monkeypatch):
    sizes = [4] * 100                                  # more shards than open files kept (64)
    ds = ShardDataset(_tiny_shards(tmp_path, sizes), flip=True)
    opened = []
    real_open = h5py.h5f.open
    monkeypatch.setattr(h5py.h5f, "open", lambda path, *a, **kw: opened.append(path) or real_open(path, *a, **kw))

    def open_files():
        return len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE))

    def opens(sampler):
        before = open_files()
        opened.clear()
        for item in sampler:
            ds[item]
        assert open_files() - before <= data._MAX_OPEN                # evicted files are closed
        ds.close()
        assert open_files() == before
        return len(opened)

    window = 4
    local = EpochSampler(len(ds), True, 0, shards=ds.shard_ids, window=window)
    assert opens(local) <= 2 * (len(sizes) + window - 1)       # 2 files per shard, wraps reopen
    assert opens(EpochSampler(len(ds), True, 0)) > 1.3 * 2 * len(sizes)   # uniform: many reopen


def test_loader_order_does_not_depend_on_the_number_of_workers(tmp_path):
    ds = ShardDataset(_tiny_shards(tmp_path, [3, 1, 4, 2, 5]), flip=True)

    def batches(workers):
        loader = make_loader(ds, 2, shuffle=True, workers=workers, seed=7)
        assert loader.sampler.shards is ds.shard_ids
        loader.sampler.set_epoch(4)
        return [x for x, _ in loader]
    a, b = batches(0), batches(2)
    assert len(a) == len(b) == 8 and all(torch.equal(x, y) for x, y in zip(a, b))
