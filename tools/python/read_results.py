#!/usr/bin/env python3
"""Read an attnscope results.h5 (docs/hdf5-schema.md) with h5py.

    read_results.py results.h5                 # summary of the file
    read_results.py results.h5 --id ISIC_0001  # one image: prediction and maps
    read_results.py results.h5 --row 0 --overlay out.png [--map stage4]

Prints one image's prediction and its maps; with --overlay saves the map, up-sampled and
blended over the preprocessed image, as a PNG (with OpenCV's cv2, Debian's python3-opencv that
scripts/bootstrap.sh installs, as classify's /overlays are drawn; else with matplotlib).
A damaged or unexpected file ends it with one line `error: FILE[:OBJECT]: what is wrong` and
exit status 1; it reads only datasets stored in the file itself (no external links, external
storage or virtual datasets).
"""
import argparse
import json
import os
import sys

import h5py
import numpy as np


def upsample(m, height, width):
    """Bilinear, align_corners=False (as the schema's map attributes say)."""
    h, w = m.shape
    ys = (np.arange(height) + 0.5) * h / height - 0.5
    xs = (np.arange(width) + 0.5) * w / width - 0.5
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = m[y0][:, x0] * (1 - wx) + m[y0][:, x1] * wx
    bottom = m[y1][:, x0] * (1 - wx) + m[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


class Bad(Exception):
    """What is wrong with the file, or with one object in it (obj: its path)."""

    def __init__(self, obj, what):
        super().__init__(what)
        self.obj = obj


def text_attr(f, name):
    """A root attribute that the schema stores as a string."""
    if name not in f.attrs:
        raise Bad(None, f"no {name} attribute")
    value = f.attrs[name]
    if not isinstance(value, str):
        raise Bad(None, f"attribute {name} is {type(value).__name__}, not a string")
    return value


def json_names(f, name):
    """A root attribute holding a JSON array of strings (class_names, maps)."""
    try:
        value = json.loads(text_attr(f, name))
    except json.JSONDecodeError as e:
        raise Bad(None, f"attribute {name} is not JSON ({e})")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad(None, f"attribute {name} is not a JSON array of strings")
    return value


def dataset(f, path):
    """The dataset at path, stored in this file. Links other than hard links are not followed (an
    external link may name a FIFO, on which opening blocks for ever), nor is a dataset read whose
    data lie in other files (external storage, a virtual dataset)."""
    obj, parts = f, path.split("/")
    for i, part in enumerate(parts):
        link = obj.get(part, getlink=True) if isinstance(obj, h5py.Group) and part not in ("", ".") else None
        if link is None:
            raise Bad("/".join(parts[:i + 1]), "missing")
        if not isinstance(link, h5py.HardLink):
            raise Bad("/".join(parts[:i + 1]), f"a link of type {type(link).__name__}, not followed")
        obj = obj[part]
    if not isinstance(obj, h5py.Dataset):
        raise Bad(path, "a group, not a dataset")
    if obj.is_virtual:
        raise Bad(path, "a virtual dataset (its data are in other files), not read")
    if obj.external is not None:
        raise Bad(path, "its data are stored in other files (external storage), not read")
    return obj


def strings(f, path):
    """A one-dimensional string dataset, read as str."""
    ds = dataset(f, path)
    if ds.ndim != 1 or h5py.check_string_dtype(ds.dtype) is None:
        raise Bad(path, f"{ds.dtype} of shape {ds.shape}, not a list of strings")
    return ds.asstr()


def read_row(f, path, row, shape, kinds="iuf"):
    """Row `row` of a numeric per-image dataset whose rows have `shape` (None: any length > 0)."""
    ds = dataset(f, path)
    sizes_ok = all(n == want if want else n > 0 for n, want in zip(ds.shape[1:], shape))
    if ds.dtype.kind not in kinds or ds.ndim != 1 + len(shape) or not sizes_ok:
        want = "(N" + "".join(f", {n or '?'}" for n in shape) + ")"
        raise Bad(path, f"{ds.dtype} of shape {ds.shape}, the schema says {want} "
                        + ("integers" if kinds == "iu" else "numbers"))
    if row >= ds.shape[0]:
        raise Bad(path, f"no row {row} (it has {ds.shape[0]})")
    try:
        return ds[row]
    except OSError as e:  # a chunk that fails its checksum or does not inflate
        raise Bad(path, f"row {row} cannot be read ({e})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--id", help="image id")
    ap.add_argument("--row", type=int, help="row number")
    ap.add_argument("--map", help="map for --overlay (default: the first)")
    ap.add_argument("--overlay", help="PNG file to write the overlay to")
    a = ap.parse_args()
    # A damaged or unexpected file is one line on stderr and exit status 1, never a traceback.
    try:
        if not os.path.isfile(a.results):  # (a FIFO would block the open)
            raise Bad(None, "no such file" if not os.path.exists(a.results) else
                      "a folder" if os.path.isdir(a.results) else "not a regular file")
        try:
            f = h5py.File(a.results, "r")
        except OSError as e:
            raise Bad(None, f"not a readable HDF5 file ({e})")
        with f:
            show(f, a)
    except Bad as e:
        where = a.results + (":" + e.obj if e.obj else "")
        sys.exit(" ".join(f"error: {where}: {e}".splitlines()))
    except Exception as e:  # what else a damaged file can raise (h5py, numpy): still one line
        sys.exit(" ".join(f"error: {a.results}: cannot read it ({type(e).__name__}: {e})".splitlines()))


def show(f, a):
    """Prints the summary and, with --id or --row, the image's prediction, maps and overlay."""
    if f.attrs.get("format") != "attnscope-results":
        sys.exit(f"error: {a.results}: not an attnscope results file")
    version = text_attr(f, "schema_version")
    if version != "1":
        sys.exit(f"error: {a.results}: schema version {version}, this reader knows 1")
    classes = json_names(f, "class_names")
    maps = json_names(f, "maps")
    ids = strings(f, "images/id")[...]
    n = len(ids)
    print(f"{a.results}: {n} images, {len(strings(f, 'errors/id'))} errors, classes {classes}, maps {maps}")
    if a.id is None and a.row is None:
        return
    if a.id is not None:
        rows = np.nonzero(ids == a.id)[0]
        if len(rows) == 0:
            sys.exit(f"error: {a.results}: no image with id {a.id!r}")
        row = int(rows[0])
    else:
        row = a.row
        if not 0 <= row < n:
            sys.exit(f"error: {a.results}: row {row} out of range (0..{n - 1})")
    last = len(classes) - 1
    prob = read_row(f, "predictions/probability", row, (len(classes),))
    pred = int(read_row(f, "predictions/label", row, (), "iu"))
    if not 0 <= pred <= last:
        raise Bad("predictions/label", f"row {row} is {pred}, not a class (0..{last})")
    label = int(read_row(f, "images/label", row, (), "iu"))  # -1: unknown
    if not -1 <= label <= last:
        raise Bad("images/label", f"row {row} is {label}, neither a class (0..{last}) nor -1 (unknown)")
    paths = strings(f, "images/source_path")
    if row >= len(paths):
        raise Bad("images/source_path", f"no row {row} (it has {len(paths)})")
    print(f"id {ids[row]}  path {paths[row]}")
    print("probability " + "  ".join(f"{c}={p:.4f}" for c, p in zip(classes, prob)))
    print(f"prediction {classes[pred]}" + (f"  label {classes[label]}" if label >= 0 else ""))
    for name in maps:
        m = read_row(f, "attention/" + name, row, (None, None))
        print(f"map {name} {m.shape[0]}x{m.shape[1]} min {m.min():.4g} max {m.max():.4g} "
              f"argmax {np.unravel_index(int(np.argmax(m)), m.shape)}")
    if a.overlay:
        if not (a.map or maps):
            raise Bad(None, "attribute maps is empty: no map to overlay")
        name = a.map or maps[0]
        m = read_row(f, "attention/" + name, row, (None, None)).astype(np.float64)
        m[~np.isfinite(m)] = 0.0  # NaN or inf (a damaged map) drawn as 0, as the report does
        normalization = f["attention/" + name].attrs.get("normalization", "max")  # as report reads it
        if normalization not in ("max", "none"):
            raise Bad("attention/" + name, "its attribute normalization is neither \"max\" nor \"none\"")
        if normalization == "none" and m.max() > 0:
            m = m / m.max()
        image = read_row(f, "images/preprocessed", row, (None, None, 3))
        up = upsample(m, image.shape[0], image.shape[1])
        # The jet colour map of OpenCV, as classify's /overlays and the report draw it
        # (matplotlib's jet differs by a few levels), or else matplotlib's (RGB, [0, 1]).
        try:
            import cv2
            plt = None
            grey = np.round(np.clip(up, 0, 1) * 255).astype(np.uint8)
            colour = cv2.applyColorMap(grey, cv2.COLORMAP_JET)[..., ::-1] / 255.0
        except ImportError:
            try:
                import matplotlib
                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
            except ImportError:
                sys.exit("error: --overlay needs OpenCV's cv2 (python3-opencv) or matplotlib: no overlay written")
            colour = plt.get_cmap("jet")(np.clip(up, 0, 1))[..., :3]
        blend = (0.5 * image / 255.0 + 0.5 * colour).clip(0, 1)
        # Written beside the target and renamed, so a failed write leaves no half PNG.
        tmp = os.path.join(os.path.dirname(a.overlay) or ".", "." + os.path.basename(a.overlay) + ".tmp.png")
        try:
            if plt is not None:
                plt.imsave(tmp, blend)
            else:
                # Encoded in memory and written by Python, which raises on a short write
                # (cv2.imwrite said True for a PNG cut short by a full disk).
                rgb = np.round(blend * 255).astype(np.uint8)
                ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
                if not ok:
                    sys.exit(f"error: {a.overlay}: cannot encode the PNG")
                with open(tmp, "wb") as out:
                    out.write(png.tobytes())
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, a.overlay)
        except OSError as e:
            sys.exit(f"error: {a.overlay}: cannot write the PNG ({e.strerror})")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        print(f"wrote {a.overlay}")


if __name__ == "__main__":
    main()
