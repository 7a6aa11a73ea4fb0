"""colorize-fcn's data pipeline: plain functions behind the Luigi tasks in tasks.py."""
import os

# torch's OpenMP threads busy-wait between parallel regions by default; on a small or
# shared CPU that spinning steals the cores from the work itself (bench/README.md
# measured a CPU train step at 2.58 s vs 0.25 s with PASSIVE).  Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# numpy's BLAS (OpenBLAS) would start a thread per core in every Luigi worker process;
# the pipeline's matrices are small (3x3 colour transforms, (N, 6) @ (6, K) posteriors),
# so those threads only compete with the other workers: bench/workers.py measured label
# shard tasks at 1.8 CPU/wall with 1 worker and twice as slow with 2.  Parallelism
# comes from Luigi workers.  Set before numpy loads; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
