"""Disk use of work-dir folders as `runs` and `gc` show it (README "Disk use")."""
import os
from pathlib import Path

# A run's resume points (train/fit.py): the latest validation's and the one before.  A finished
# run (done.json) never resumes: best.pt is what colorize, Evaluate and FCN-16s read.
RESUME_CHECKPOINTS = ("checkpoint.pt", "checkpoint.prev.pt")


def disk_usage(path) -> tuple:
    """(bytes, files) of a file or a folder tree (sizes of the files, links not followed)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size, 1
    total = count = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
                count += 1
            except OSError:
                pass
    return total, count


def human_size(n) -> str:
    """1000-based: '512 B', '3.6 GB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
