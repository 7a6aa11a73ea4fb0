"""Signatures that name every output after everything that made it.

Luigi only checks that an output exists, so each output path carries a short
hash of: the stage's code version, the task's output-affecting parameters, the
signatures of its inputs and, for source images, their stat fingerprints.
Change any of these and the path changes, so exactly the stale stages rerun.
"""
import hashlib
import json
import os

# Bump a stage's number when its code changes what it writes; that stage and
# everything downstream of it then rerun.
STAGE_VERSIONS = {
    "lab": 3,        # decode, resize, Lab conversion, shard layout (2: int16 fixed-point Lab;
                     # 3: JPEG draft down to 2x the target, crop on the exact drafted extent)
    "mean": 1,       # mean lightness estimate
    "gmm": 1,        # hue/chroma mixture fit
    "labels": 2,     # low-pass + posteriors (2: reads int16 Lab, batched)
    "prior": 1,      # empirical cluster prior
    "train": 1,      # training loop / model definitions
    "evaluate": 1,   # metrics and report
}

SIG_LEN = 12


def signature(stage: str, **parts) -> str:
    """Short stable hash of a stage's code version and the given JSON-able parts."""
    payload = json.dumps({"stage": stage, "version": STAGE_VERSIONS[stage], **parts},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:SIG_LEN]


def file_fingerprint(path) -> str:
    """Cheap change detector for a source file: size and mtime in ns ('missing' if absent)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    return f"{st.st_size}-{st.st_mtime_ns}"


def hash_strings(items) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()[:SIG_LEN]
