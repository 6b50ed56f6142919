"""localedit: local, reusable h-space edits of pixel-space diffusion models.

Importing the package lets OpenMP threads sleep at barriers (``OMP_WAIT_POLICY=PASSIVE``, unless
the user set a policy) before torch loads its OpenMP runtime: with the default spinning wait, a
2-thread Jacobian on a machine whose other core is busy ran 4-6x slower than with one thread
(``benchmarks/RESULTS.md``, mining throughput; measured on a busy machine only).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
