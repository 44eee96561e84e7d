"""GOMP_SPINCOUNT=3000 and OPENBLAS_THREAD_TIMEOUT=16 for this Python process, as attnscope's
launcher sets them for attnscope (runtime/runtime.h: idle OpenMP workers spin briefly, idle
OpenBLAS threads yield for 2^16 cycles instead of 2^28 before they sleep).

libgomp reads GOMP_SPINCOUNT once, when it is loaded (with torch), and OpenBLAS
OPENBLAS_THREAD_TIMEOUT likewise, so setting os.environ after `import torch` changes only child
processes. Import this module before torch: without the variables it executes the script again
with them (attnscope's launcher sets them before attnscope starts).
The default spin (300,000 iterations after every parallel region) cost the Python side of
train_vs_pytorch.py up to 2.7 times its speed beside its DataLoader worker processes.
"""

import os
import sys

_missing = {name: value for name, value in (("GOMP_SPINCOUNT", "3000"),
                                           ("OPENBLAS_THREAD_TIMEOUT", "16"))
            if os.environ.get(name) is None}
if _missing:
    os.environ.update(_missing)
    os.execv(sys.executable, [sys.executable] + sys.argv)
