"""`--malloc jemalloc|tcmalloc` for a benchmark's Python side, as PyTorch's users tune it.

PyTorch's performance tuning guide tells CPU users to run with jemalloc or TCMalloc
(LD_PRELOAD), because glibc's malloc returns large freed blocks to the kernel and faults them
in again. A benchmark that imports this module before torch and after bench/gomp_env.py
(whose re-execution would drop the preload) and is given `--malloc jemalloc` or
`--malloc tcmalloc` executes itself again with the library
preloaded (jemalloc with the MALLOC_CONF of Intel's PyTorch tuning guide), so the Python
process and its forked DataLoader workers use it; LD_PRELOAD is then taken out of the
environment again, so that the attnscope commands the benchmark runs keep their own malloc.
Debian's packages: libjemalloc2, libtcmalloc-minimal4.
"""

import os
import sys

LIBS = {
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}
JEMALLOC_CONF = ("oversize_threshold:1,background_thread:true,metadata_thp:auto,"
                 "dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000")
MARKER = "ATTNSCOPE_BENCH_PRELOADED"
THP_TUNABLE = "glibc.malloc.hugetlb=1"
THP_MARKER = "ATTNSCOPE_BENCH_THP"
THP_BEFORE = "ATTNSCOPE_BENCH_TUNABLES_BEFORE"


def requested(argv):
    for i, a in enumerate(argv):
        if a == "--malloc" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--malloc="):
            return a.split("=", 1)[1]
    return ""


def with_thp(env):
    """The variables that start a Python process with THP_TUNABLE after the user's tunables."""
    before = env.get("GLIBC_TUNABLES")
    out = {"GLIBC_TUNABLES": (before + ":" if before else "") + THP_TUNABLE, THP_MARKER: "1"}
    if before is not None:
        out[THP_BEFORE] = before
    return out


choice = requested(sys.argv[1:])
# --python-thp: glibc's malloc advises its heaps for transparent huge pages, as attnscope's
# launcher has it do for attnscope (glibc.malloc.hugetlb=1; docs/architecture.md, "Huge
# pages"); glibc reads it only when the process starts. Meaningful with glibc's malloc
# (--malloc attnscope or glibc), not with a preloaded one.
thp = "--python-thp" in sys.argv[1:]
need_lib = choice in LIBS and os.environ.get(MARKER) != LIBS[choice]
need_thp = thp and os.environ.get(THP_MARKER) != "1"
if need_lib or need_thp:
    if need_lib:
        if not os.path.exists(LIBS[choice]):
            raise SystemExit("--malloc %s needs %s (apt-get install %s)" %
                             (choice, LIBS[choice], PACKAGES[choice]))
        os.environ["LD_PRELOAD"] = LIBS[choice]
        if choice == "jemalloc":
            os.environ["MALLOC_CONF"] = JEMALLOC_CONF
        os.environ[MARKER] = LIBS[choice]
    if need_thp:
        os.environ.update(with_thp(os.environ))
    os.execv(sys.executable, [sys.executable] + sys.argv)
if os.environ.get(MARKER):
    # Preloaded into this process already; the commands it runs get their own malloc back.
    os.environ.pop("LD_PRELOAD", None)
    os.environ.pop("MALLOC_CONF", None)
if os.environ.get(THP_MARKER):
    # The commands it runs get the user's own tunables back.
    before = os.environ.pop(THP_BEFORE, None)
    if before is None:
        os.environ.pop("GLIBC_TUNABLES", None)
    else:
        os.environ["GLIBC_TUNABLES"] = before
