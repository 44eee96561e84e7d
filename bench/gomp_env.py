"""GOMP_SPINCOUNT=3000 for this Python process, as attnscope sets it for itself.

libgomp reads GOMP_SPINCOUNT once, when it is loaded (with torch), so setting os.environ after
`import torch` changes only child processes. Import this module before torch: without the
variable it executes the script again with it (attnscope's launcher does the same for itself).
The default spin (300,000 iterations after every parallel region) cost the Python side of
train_vs_pytorch.py up to 2.7 times its speed beside its DataLoader worker processes.
"""

import os
import sys

if os.environ.get("GOMP_SPINCOUNT") is None:
    os.environ["GOMP_SPINCOUNT"] = "3000"
    os.execv(sys.executable, [sys.executable] + sys.argv)
