#!/usr/bin/env python3
"""Read an attnscope results.h5 (docs/hdf5-schema.md) with h5py.

    read_results.py results.h5                 # summary of the file
    read_results.py results.h5 --id ISIC_0001  # one image: prediction and maps
    read_results.py results.h5 --row 0 --overlay out.png [--map stage4]

Prints one image's prediction and its maps; with --overlay saves the map, up-sampled and
blended over the preprocessed image, as a PNG (with OpenCV's cv2, Debian's python3-opencv that
scripts/bootstrap.sh installs, as classify's /overlays are drawn; else with matplotlib).
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--id", help="image id")
    ap.add_argument("--row", type=int, help="row number")
    ap.add_argument("--map", help="map for --overlay (default: the first)")
    ap.add_argument("--overlay", help="PNG file to write the overlay to")
    a = ap.parse_args()
    with h5py.File(a.results, "r") as f:
        if f.attrs.get("format") != "attnscope-results":
            sys.exit(f"error: {a.results}: not an attnscope results file")
        if f.attrs["schema_version"] != "1":
            sys.exit(f"error: {a.results}: schema version {f.attrs['schema_version']}, this reader knows 1")
        classes = json.loads(f.attrs["class_names"])
        maps = json.loads(f.attrs["maps"])
        ids = f["images/id"].asstr()[...]
        n = len(ids)
        print(f"{a.results}: {n} images, {len(f['errors/id'])} errors, classes {classes}, maps {maps}")
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
        prob = f["predictions/probability"][row]
        pred = int(f["predictions/label"][row])
        label = int(f["images/label"][row])
        print(f"id {ids[row]}  path {f['images/source_path'].asstr()[row]}")
        print("probability " + "  ".join(f"{c}={p:.4f}" for c, p in zip(classes, prob)))
        print(f"prediction {classes[pred]}" + (f"  label {classes[label]}" if label >= 0 else ""))
        for name in maps:
            m = f["attention/" + name][row]
            print(f"map {name} {m.shape[0]}x{m.shape[1]} min {m.min():.4g} max {m.max():.4g} "
                  f"argmax {np.unravel_index(int(np.argmax(m)), m.shape)}")
        if a.overlay:
            name = a.map or maps[0]
            ds = f["attention/" + name]
            m = ds[row].astype(np.float64)
            m[~np.isfinite(m)] = 0.0  # NaN or inf (a damaged map) drawn as 0, as the report does
            if ds.attrs["normalization"] == "none" and m.max() > 0:
                m = m / m.max()
            image = f["images/preprocessed"][row]
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
