"""The checksum of an attnscope checkpoint (format_version 3), computed with h5py and numpy
alone: an oracle independent of pipeline/checkpoint.cpp's file_checksum, and the way tests
re-seal a checkpoint whose fields they craft on purpose.

    checksum(path) -> "fnv1a64:<16 hex digits>"
    seal(path)     -> writes it as the root's `checksum` attribute

Usage: python3 checkpoint_checksum.py {checksum|seal} FILE...

FNV-1a 64 over every dataset in byte order of its path ("conv.weight",
"train_state/_history"): the path and a NUL, the element size, rank and dimensions as
little-endian int64, the bytes in C order, little-endian; then over every group (by path, the
root being "" and the others ending in "/"): its path and a NUL, then its attributes by name,
each as "group@name" and a NUL, then for a scalar string attribute its UTF-8 value and a NUL.
The root's `checksum` is left out.
"""
import struct
import sys

import h5py
import numpy as np

PRIME = 0x100000001B3
MASK = (1 << 64) - 1


class Fnv1a:
    def __init__(self):
        self.value = 0xCBF29CE484222325

    def add(self, data):
        h = self.value
        for byte in bytes(data):
            h = ((h ^ byte) * PRIME) & MASK
        self.value = h


def checksum(path, attributes=True):
    """attributes=False: format_version 2's tensor_checksum (the root's datasets only)."""
    groups, datasets = [""], []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            (datasets if isinstance(obj, h5py.Dataset) else groups).append(name)
        f.visititems(visit)
        groups = sorted(g if g == "" else g + "/" for g in groups)
        h = Fnv1a()
        if not attributes:
            datasets = [d for d in datasets if "/" not in d]
        for name in sorted(datasets, key=lambda n: n.encode()):
            a = f[name][()]
            a = np.asarray(a)
            if a.dtype == np.bool_:
                a = a.astype(np.uint8)
            a = np.asarray(a, dtype=a.dtype.newbyteorder("<"))  # keeps a scalar 0-d
            h.add(name.encode() + b"\0")
            h.add(struct.pack("<q", a.dtype.itemsize))
            h.add(struct.pack("<q", a.ndim))
            for d in a.shape:
                h.add(struct.pack("<q", d))
            h.add(a.tobytes(order="C"))  # byte by byte: ~1 s per MB; tests' models are small
        for group in sorted(groups, key=lambda n: n.encode()) if attributes else []:
            obj = f[group] if group else f
            h.add(group.encode() + b"\0")
            for name in sorted(obj.attrs.keys(), key=lambda n: n.encode()):
                if group == "" and name == "checksum":
                    continue
                h.add((group + "@" + name).encode() + b"\0")
                value = obj.attrs[name]
                if isinstance(value, str):
                    h.add(value.encode() + b"\0")
                elif isinstance(value, bytes):
                    h.add(value.split(b"\0")[0] + b"\0")
        return "fnv1a64:%016x" % h.value


def seal(path):
    value = checksum(path)
    with h5py.File(path, "a") as f:
        if "checksum" in f.attrs:
            del f.attrs["checksum"]
        f.attrs["checksum"] = value
    return value


if __name__ == "__main__":
    what = {"checksum": checksum, "seal": seal}[sys.argv[1]]
    for p in sys.argv[2:]:
        print(what(p))
