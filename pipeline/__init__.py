"""colorize-fcn's data pipeline: plain functions behind the Luigi tasks in tasks.py."""
import os

# torch's OpenMP threads busy-wait between parallel regions by default; on a small or
# shared CPU that spinning steals the cores from the work itself (bench/README.md
# measured a CPU train step at 2.58 s vs 0.25 s with PASSIVE).  Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
