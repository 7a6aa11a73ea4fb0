"""Signatures that name every output after everything that made it.

Luigi only checks that an output exists, so each output path carries a short
hash of: the task class's version, its output-affecting parameters and the
signatures of every task it requires (tasks.Stage.sig); at the bottom, a shard's
source images are signed by their fingerprints (pipeline/plan.py,
pipeline/fingerprint.py).
Change any of these and the path changes, so exactly the stale stages rerun.
"""
import hashlib
import json

SIG_LEN = 12


def signature(kind: str, **parts) -> str:
    """Short stable hash of a kind of thing (a task family, "shard files", ...) and the
    given JSON-able parts (code version, parameters, input signatures)."""
    payload = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:SIG_LEN]


def hash_strings(items) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()[:SIG_LEN]
