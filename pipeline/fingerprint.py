"""Fingerprints of source files: how a rerun tells that a source image changed.

Two modes (luigi.cfg `[colorize] fingerprint`); the strings go into shard signatures:

  stat     "<size>-<mtime_ns>-<ctime_ns>-<inode>" from one os.stat; no file is read.
           New bytes under an old name cannot hide: writing in place sets ctime,
           replacing by rename brings a new inode (and ctime), and neither can be
           set back from user space (`touch -r` restores mtime only).  Costs:
           chmod, chown, a rename or a new hard link also set ctime (that shard
           rebuilds, needlessly); a copy of the dataset to another disk changes
           every inode and ctime (everything rebuilds).
  content  "b2-<blake2b-128 of the bytes>".  Only a byte change rebuilds; touch,
           chmod or a copy to another disk do not.  Digests are cached per file
           under the stat fingerprint above, so a rerun reads no file whose stat
           is unchanged.  The cache is one JSON file per dataset location in
           `cache_dir`, rewritten atomically (merged with what is on disk) only
           when it gained entries; a missing or corrupt cache is recomputed.

"missing" stands for an absent file in both modes, so a file that appears later
changes its shard's signature; "unreadable-..." for a path that is not a readable
regular file (a folder, a FIFO, a symbolic link loop): nothing but a regular file is
ever opened (pipeline.regular), and such a file is skipped with its reason when the
shard is built (pipeline.images).
"""
import errno
import hashlib
import json
import os
import stat
import time
from pathlib import Path

from .atomic import remove_stale_temporaries, write_text_atomic
from .regular import open_regular
from .signature import hash_strings

MODES = ("stat", "content")
DIGEST_BYTES = 16           # blake2b-128: collisions are not a concern for change detection
READ_CHUNK = 1 << 20        # bytes per read while hashing
# File timestamps advance in coarse ticks (a jiffy on Linux, 2 s on FAT), so a file
# rewritten within the tick of our read keeps its stat.  Digests of files changed
# less than this long before the read are therefore not cached (as git's "racy" index
# entries): they are rehashed on the next run instead of trusted.
RACY_NS = 2_000_000_000
MISSING = "missing"


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown fingerprint mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def stat_key(st: os.stat_result) -> str:
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}"


def _stat(path: str):
    """os.stat(path), None for a missing file, or a marker string for a path that cannot be
    stat'ed (a symbolic link loop: ELOOP; no permission on a folder above it), which
    changes when the path becomes a file.  The file is skipped with its reason when read
    (pipeline.images); one such path never fails the whole plan."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable-{errno.errorcode.get(e.errno, e.errno)}"


def content_digest(path: str) -> str:
    """'b2-<hex>' of the file's bytes (reads the whole file); NotRegular (an OSError) for
    anything but a regular file, which is never opened (a FIFO would block forever)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    with open_regular(path) as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return "b2-" + h.hexdigest()


def _content_or_stat(path: str, st: os.stat_result) -> str:
    """The digest, or for a file that cannot be read (a folder, a FIFO, no permission) a
    marker that still changes when its stat does (chmod sets ctime)."""
    if not stat.S_ISREG(st.st_mode):
        return "unreadable-" + stat_key(st)          # not opened at all (pipeline.regular)
    try:
        return content_digest(path)
    except OSError:
        return "unreadable-" + stat_key(st)


def _fingerprint(path: str, st, mode: str) -> str:
    """One file's fingerprint from its _stat result."""
    if st is None:
        return MISSING
    if isinstance(st, str):
        return st
    return stat_key(st) if mode == "stat" else _content_or_stat(path, st)


def file_fingerprint(path, mode: str = "stat") -> str:
    """Fingerprint of one file, uncached (see the module docstring)."""
    check_mode(mode)
    path = os.fspath(path)
    return _fingerprint(path, _stat(path), mode)


def fingerprint_files(root, relpaths, mode: str = "stat", cache_dir=None) -> list:
    """Fingerprints of root/relpath for each relpath, in order.

    Content mode reads its digest cache from `cache_dir` (None: no cache, every
    file is read) and writes it back when it gained entries.
    """
    check_mode(mode)
    root = os.fspath(Path(root).resolve())
    paths = [os.path.join(root, rp) for rp in relpaths]
    if mode == "stat":
        return [_fingerprint(p, _stat(p), mode) for p in paths]
    cache_file = cache_path(cache_dir, root) if cache_dir is not None else None
    cache = load_cache(cache_file) if cache_file else {}
    settled_before = time.time_ns() - RACY_NS
    out, fresh = [], {}
    for rp, p in zip(relpaths, paths):
        st = _stat(p)
        if st is None or isinstance(st, str):
            out.append(_fingerprint(p, st, mode))
            continue
        key = f"{rp}\t{stat_key(st)}"
        fp = cache.get(key)
        if type(fp) is not str:     # a miss (or a damaged entry)
            fp = _content_or_stat(p, st)
            if fp.startswith("b2-") and st.st_ctime_ns < settled_before:
                fresh[key] = fp
        out.append(fp)
    if cache_file and fresh:
        save_cache(cache_file, fresh)
    return out


# ---------------------------------------------------------------- digest cache
def cache_path(cache_dir, root) -> Path:
    """One cache file per dataset location: the entries are only valid there (inodes)."""
    root = Path(root).resolve()
    return Path(cache_dir) / f"{root.name}-{hash_strings([str(root)])}.json"


def load_cache(path) -> dict:
    """{"<relpath>\t<stat fingerprint>": digest}; {} when the file is missing or not a
    cache.  Values are checked where they are used (a non-string is a miss)."""
    try:
        entries = json.loads(Path(path).read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def save_cache(path, fresh: dict) -> None:
    """Merge `fresh` entries into the cache on disk and replace it atomically; an
    entry of a file that has a fresh one (the same relpath) is dropped.

    Two writers at once both leave a complete file (rename is atomic); the
    later one may drop the other's new entries, which only costs a reread."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    renewed = {k.rsplit("\t", 1)[0] for k in fresh}
    entries = {k: v for k, v in load_cache(path).items() if k.rsplit("\t", 1)[0] not in renewed}
    entries.update(fresh)
    write_text_atomic(path, json.dumps({"version": 1, "entries": entries}, separators=(",", ":")))
