"""Which source images go into which shard, and each shard's signature.

Shard boundaries are content-defined (as in rsync / deduplicating backups): a
shard ends after a file whose path hash is 0 mod shard_size, or at 4x
shard_size.  Adding, removing or editing one image therefore changes one shard
(the one holding it), not every shard after it as fixed-size chunking would.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .signature import file_fingerprint, hash_strings, signature


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


def plan_shards(root, relpaths, shard_size: int, im_size: int):
    """Group the files and sign each group by its paths, stat fingerprints and im_size."""
    root = Path(root)
    plans = []
    for group in group_files(relpaths, shard_size):
        fps = [f"{rp}\t{file_fingerprint(root / rp)}" for rp in group]
        plans.append(ShardPlan(signature("lab", im_size=im_size, files=hash_strings(fps)), tuple(group)))
    return plans


def dataset_id(root) -> str:
    """Readable, unique name of a dataset folder: its name plus a hash of its absolute path."""
    root = Path(root).resolve()
    return f"{root.name}-{hash_strings([str(root)])[:6]}"
