"""Which source images go into which shard, and each shard's signature.

Shard boundaries are content-defined (as in rsync / deduplicating backups): a
shard ends after a file whose path hash is 0 mod shard_size, or at 4x
shard_size.  Adding, removing or editing one image therefore changes one shard
(the one holding it), not every shard after it as fixed-size chunking would.

A shard's signature covers its files' relative paths and fingerprints
(pipeline/fingerprint.py), never the dataset's absolute location: the same
files reached from another place are the same data (see dataset_id).

Samples (the GMM's images) are chosen by a stable hash of each file's relative path
(sample_key), so whether a file is in a sample depends on nothing but that file and the
sample's size: adding a file that does not rank among the first n leaves the sample as it
was.  Shards are handed to Luigi in batches (batch_plans): its scheduler does work in
proportion to its task count for every task it hands out.
"""
import hashlib
import heapq
from dataclasses import dataclass
from pathlib import Path

from .fingerprint import fingerprint_files
from .signature import hash_strings, signature


@dataclass(frozen=True)
class ShardPlan:
    sig: str                  # names the shard's outputs; changes when any of its files does
    files: tuple              # relative paths, in list order
    fingerprints: tuple       # of each file, as signed (pipeline/fingerprint.py)


def _path_hash(relpath: str) -> int:
    return int.from_bytes(hashlib.blake2b(relpath.encode(), digest_size=8).digest(), "big")


def group_files(relpaths, shard_size: int):
    """Split relpaths (in order) into content-defined groups of about shard_size."""
    groups, current = [], []
    for rp in relpaths:
        current.append(rp)
        if _path_hash(rp) % shard_size == 0 or len(current) >= 4 * shard_size:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def plan_shards(root, relpaths, shard_size: int, im_size: int, fingerprint: str = "stat", cache_dir=None):
    """Group the files and sign each group by its paths, fingerprints and im_size.

    `fingerprint`: "stat" or "content" (pipeline/fingerprint.py); `cache_dir`: where
    content mode keeps its digest cache (None: no cache, every file is read).
    """
    groups = group_files(relpaths, shard_size)
    fps = iter(fingerprint_files(root, [rp for g in groups for rp in g], fingerprint, cache_dir))
    plans = []
    for group in groups:
        prints = tuple(next(fps) for _ in group)
        lines = [f"{rp}\t{fp}" for rp, fp in zip(group, prints)]
        plans.append(ShardPlan(signature("shard files", im_size=im_size, files=hash_strings(lines)),
                               tuple(group), prints))
    return plans


def batch_plans(plans, max_batches: int) -> list:
    """Consecutive plans in at most max_batches batches of near-equal length (one shard per
    batch when there are no more shards than that).  Batches only decide how many shards one
    Luigi task builds: a shard's outputs are named by its own signature, so a regrouped
    shard is not rebuilt."""
    n = min(len(plans), max_batches)
    bounds = [i * len(plans) // n for i in range(n + 1)] if n else [0]
    return [plans[a:b] for a, b in zip(bounds, bounds[1:])]


def sample_key(relpath: str, seed: int) -> int:
    """A file's rank in seeded samples: a stable 64-bit hash of (seed, relative path)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{relpath}".encode(), digest_size=8).digest(), "big")


def sample_files(plans, n: int, seed: int) -> list:
    """[(relpath, fingerprint, plan index)] of the n listed files with the smallest
    sample_key, in key order: a sample that a file joins only by ranking among the first n.
    (~2 s for ImageNet's 1.28M files here: one blake2b per path.)"""
    ranked = heapq.nsmallest(n, ((sample_key(rp, seed), rp, fp, i) for i, p in enumerate(plans)
                                 for rp, fp in zip(p.files, p.fingerprints)))
    return [(rp, fp, i) for _, rp, fp, i in ranked]


def dataset_id(root) -> str:
    """Readable name of a dataset folder for logs and manifests: the folder's name.

    Deliberately not a hash of the absolute path: no artifact depends on where the
    dataset lies (shard signatures cover relative paths and fingerprints, run
    signatures cover shard signatures), so moving the folder must rebuild nothing.
    Output paths should not depend on this name either (renaming the folder would
    rebuild Lab and label shards while runs stay complete); README "Stale-only reruns".
    """
    return Path(root).resolve().name
