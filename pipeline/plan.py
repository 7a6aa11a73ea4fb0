"""Which source images go into which shard, and each shard's signature.

Shard boundaries are content-defined (as in rsync / deduplicating backups): a
shard ends after a file whose path hash is 0 mod shard_size, or at 4x
shard_size.  Adding, removing or editing one image therefore changes one shard
(the one holding it), not every shard after it as fixed-size chunking would.

A shard's signature covers its files' relative paths and fingerprints
(pipeline/fingerprint.py), never the dataset's absolute location: the same
files reached from another place are the same data (see dataset_id).
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .fingerprint import fingerprint_files
from .signature import hash_strings, signature


@dataclass(frozen=True)
class ShardPlan:
    sig: str                  # names the shard's outputs; changes when any of its files does
    files: tuple              # relative paths, in list order


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
        lines = [f"{rp}\t{next(fps)}" for rp in group]
        plans.append(ShardPlan(signature("shard files", im_size=im_size, files=hash_strings(lines)), tuple(group)))
    return plans


def dataset_id(root) -> str:
    """Readable name of a dataset folder for logs and manifests: the folder's name.

    Deliberately not a hash of the absolute path: no artifact depends on where the
    dataset lies (shard signatures cover relative paths and fingerprints, run
    signatures cover shard signatures), so moving the folder must rebuild nothing.
    Output paths should not depend on this name either (renaming the folder would
    rebuild Lab and label shards while runs stay complete); README "Stale-only reruns".
    """
    return Path(root).resolve().name
