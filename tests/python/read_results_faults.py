#!/usr/bin/env python3
"""Damaged and crafted results.h5 files make tools/python/read_results.py fail in one line.

    read_results_faults.py RESULTS_H5 WORKDIR

Copies RESULTS_H5 (a genuine file, as `attnscope classify` writes it) into WORKDIR, crafts one
file per fault from it with h5py and runs the reader on each (`--row 0 --overlay`, so that every
object it reads is read). A faulty file must end the reader with exit status 1, exactly one line
on stderr that starts with "error: <the file>", no traceback, within 60 s (an external link to a
FIFO once hung it). The genuine file, and one whose ground truth is -1 (unknown), must read with
status 0 and nothing on stderr. READ_RESULTS=PATH runs another reader (an older one: this test
must fail). Prints one line per case; exit status 0 when every case passed, 1 otherwise (2: usage).
"""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

READER = os.environ.get("READ_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "python", "read_results.py")


def edit(fn):
    """A case that opens the copy with h5py and changes it with fn(f, work)."""
    def craft(path, work):
        with h5py.File(path, "r+") as f:
            fn(f, work)
        return path
    return craft


def set_row0(name, value):
    """Row 0 of `name` set to value(number of classes)."""
    def fn(f, work):
        f[name][0] = value(len(json.loads(f.attrs["class_names"])))
    return edit(fn)


def set_attr(name, value):
    def fn(f, work):
        f.attrs[name] = value
    return edit(fn)


def fifo(work):
    path = os.path.join(work, "fifo")
    if not os.path.exists(path):
        os.mkfifo(path)
    return path


def external_link(name):
    """`name` (a dataset or a group) replaced by an external link to a FIFO."""
    def fn(f, work):
        del f[name]
        f[name] = h5py.ExternalLink(fifo(work), "/" + name)
    return edit(fn)


def external_storage(f, work):
    """attention/stage3 stored in an external file, which is then replaced by a FIFO."""
    data = f["attention/stage3"][...]
    raw = os.path.join(work, "external.raw")
    del f["attention/stage3"]
    f.create_dataset("attention/stage3", data=data, external=[(raw, 0, h5py.h5f.UNLIMITED)])
    f.flush()
    os.remove(raw)
    os.rename(fifo(work), raw)


def virtual(f, work):
    """attention/stage3 a virtual dataset whose source is in a FIFO."""
    ds = f["attention/stage3"]
    layout = h5py.VirtualLayout(shape=ds.shape, dtype=ds.dtype)
    layout[...] = h5py.VirtualSource(fifo(work), "/attention/stage3", shape=ds.shape)
    del f["attention/stage3"]
    f.create_virtual_dataset("attention/stage3", layout)


def probability_3_columns(f, work):
    p = f["predictions/probability"][...]
    del f["predictions/probability"]
    f["predictions/probability"] = np.concatenate([p, p[:, :1]], axis=1)


def probability_strings(f, work):
    n = len(f["predictions/probability"])
    del f["predictions/probability"]
    f["predictions/probability"] = np.array([b"x"] * n)


def map_as_group(f, work):
    del f["attention/stage4"]
    f.create_group("attention/stage4")


def map_1d(f, work):
    n = len(f["attention/stage4"])
    del f["attention/stage4"]
    f["attention/stage4"] = np.zeros((n, 5), np.float32)


def write_bytes(data):
    """A case that writes data(the genuine copy's bytes) over the copy."""
    def craft(path, work):
        with open(path, "rb") as src:
            genuine = src.read()
        with open(path, "wb") as out:
            out.write(data(genuine))
        return path
    return craft


def damaged_chunk(path, work):
    """Row 0 of attention/stage3 (one chunk, checksummed) overwritten with other bytes."""
    with h5py.File(path, "r") as f:
        chunk = f["attention/stage3"].id.get_chunk_info(0)
    with open(path, "r+b") as out:
        out.seek(chunk.byte_offset)
        out.write(bytes(range(256)) * (chunk.size // 256) + bytes(chunk.size % 256))
    return path


def folder(path, work):
    os.remove(path)
    os.mkdir(path)
    return path


def missing(path, work):
    os.remove(path)
    return path


def fifo_itself(path, work):
    os.remove(path)
    os.mkfifo(path)
    return path


# (name, craft(path, work) -> the path to read, status 0 expected, text stderr must hold)
CASES = [
    ("genuine file", lambda path, work: path, True, None),
    ("images/label -1 (unknown ground truth)", set_row0("images/label", lambda c: -1), True, None),
    ("predictions/label -1", set_row0("predictions/label", lambda c: -1), False, "predictions/label"),
    ("predictions/label = number of classes", set_row0("predictions/label", lambda c: c), False, None),
    ("images/label = number of classes", set_row0("images/label", lambda c: c), False, None),
    ("images/label -2", set_row0("images/label", lambda c: -2), False, None),
    ("class_names a JSON string", set_attr("class_names", '"benign"'), False, None),
    ("class_names not JSON", set_attr("class_names", '["benign", "malig'), False, None),
    ("maps not JSON", set_attr("maps", "stage3"), False, None),
    ("probability (N, 3) for 2 classes", edit(probability_3_columns), False, None),
    ("probability of strings", edit(probability_strings), False, None),
    ("schema_version an int", set_attr("schema_version", 1), False, "not a string"),
    ("schema_version missing", edit(lambda f, work: f.attrs.__delitem__("schema_version")), False, None),
    ("a map missing", edit(lambda f, work: f.__delitem__("attention/stage4")), False, "attention/stage4"),
    ("a map a group", edit(map_as_group), False, "attention/stage4"),
    ("a map of 1-D rows", edit(map_1d), False, None),
    ("images/id missing", edit(lambda f, work: f.__delitem__("images/id")), False, "images/id"),
    ("a damaged map chunk", damaged_chunk, False, "attention/stage3"),
    ("empty file", write_bytes(lambda data: b""), False, None),
    ("file cut in half", write_bytes(lambda data: data[:len(data) // 2]), False, None),
    ("file cut short by 100 bytes", write_bytes(lambda data: data[:-100]), False, None),
    ("not HDF5", write_bytes(lambda data: b"id,path\nx,y\n"), False, None),
    ("a folder", folder, False, None),
    ("missing file", missing, False, None),
    ("the file a FIFO", fifo_itself, False, None),
    ("map: external link to a FIFO", external_link("attention/stage3"), False, "attention/stage3"),
    ("group: external link to a FIFO", external_link("images"), False, "images: a link"),
    ("map: external storage in a FIFO", edit(external_storage), False, "attention/stage3"),
    ("map: virtual dataset from a FIFO", edit(virtual), False, "attention/stage3"),
]


def run_case(name, craft, good, expect, genuine, work):
    case_dir = os.path.join(work, "".join(c if c.isalnum() else "_" for c in name))
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    path = os.path.join(case_dir, "results.h5")
    shutil.copyfile(genuine, path)
    path = craft(path, case_dir)
    cmd = [sys.executable, READER, path, "--row", "0", "--overlay", os.path.join(case_dir, "overlay.png")]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "no answer within 60 s (hangs)", ""
    lines = r.stderr.splitlines()
    if "Traceback" in r.stderr:
        return f"a traceback: {lines[-1] if lines else ''}", ""
    if good:
        ok = r.returncode == 0 and not lines
        return (None if ok else f"status {r.returncode}, not 0, stderr {r.stderr!r}"), ""
    if r.returncode != 1:
        return f"status {r.returncode}, not 1 (stdout {r.stdout[-200:]!r}, stderr {r.stderr[-200:]!r})", ""
    if len(lines) != 1 or not lines[0].startswith(f"error: {path}"):
        return f"stderr is not one line 'error: {path}...': {r.stderr!r}", ""
    if expect and expect not in lines[0]:
        return f"stderr does not say {expect!r}: {lines[0]!r}", ""
    return None, lines[0]


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    genuine, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    print(f"reader {READER}")
    failed = []
    for name, craft, good, expect in CASES:
        try:
            problem, said = run_case(name, craft, good, expect, genuine, work)
        except Exception as e:  # a case that could not be crafted fails too
            problem, said = f"cannot craft it: {type(e).__name__}: {e}", ""
        print(f"{'FAIL' if problem else 'ok  '} {name}: {problem or said or 'read'}", flush=True)
        if problem:
            failed.append(name)
    if failed:
        print(f"{len(failed)} of {len(CASES)} cases failed: " + "; ".join(failed))
        return 1
    print(f"all {len(CASES)} cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
