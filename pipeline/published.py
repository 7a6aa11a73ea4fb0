"""Dataset folders built in one piece (the bundled samples, generated sets).

A builder writes into a hidden temporary folder beside the destination, adds a
manifest.json naming what a complete folder holds, and renames the folder into
place; a destination that exists with a valid manifest is complete, and two
builders racing each other both end with one complete folder.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .atomic import write_text_atomic
from .splits import list_file

MANIFEST = "manifest.json"


def umask() -> int:
    """The process umask, read without changing it (Linux), else 0o022."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def mkdtemp_next_to(dest: Path) -> Path:
    """Hidden temporary folder beside ``dest`` (same file system, so it can
    be renamed into place) with normal permissions (mkdtemp uses 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def _read_manifest(dest: Path) -> dict | None:
    try:
        with open(dest / MANIFEST, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def complete_folder(dest: Path, kind: str) -> dict | None:
    """The manifest if ``dest`` holds a complete set of ``kind``, else None."""
    m = _read_manifest(dest)
    if not m or m.get("kind") != kind:
        return None
    for split in m.get("splits", {}):
        if not list_file(dest, split).is_file():
            return None
    for rel in m.get("check_files", []):
        if not (dest / rel).is_file():
            return None
    return m


def prepare_folder(dest: Path, kind: str) -> dict | None:
    """Return the manifest if dest is complete; make way for a new build
    otherwise (an empty folder is removed; anything else is an error)."""
    m = complete_folder(dest, kind)
    if m is not None:
        return m
    if dest.exists():
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        else:
            raise FileExistsError(
                errno.EEXIST,
                f"exists but is not a complete {kind} folder (no valid "
                f"{MANIFEST}); delete it or choose another destination",
                str(dest),
            )
    dest.parent.mkdir(parents=True, exist_ok=True)
    return None


def publish_folder(tmp: Path, dest: Path, kind: str) -> bool:
    """Rename the finished ``tmp`` to ``dest``.  Returns False (and removes
    ``tmp``) if a concurrent build published a complete ``dest`` first."""
    try:
        os.rename(tmp, dest)
        return True
    except OSError:
        if complete_folder(dest, kind) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


def write_folder_manifest(folder: Path, manifest: dict) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
