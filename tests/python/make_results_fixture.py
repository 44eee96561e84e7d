#!/usr/bin/python3
"""Writes a results.h5 following docs/hdf5-schema.md (schema version 1) with h5py, so the
report is tested against a file written independently of attnscope's own writer.

usage: make_results_fixture.py OUT.h5 [--n N] [--errors E] [--size PX] [--tta] [--measures]
                               [--unlabelled] [--evil] [--seed S]

Images: a grey background with a dark disc at a random place; the maps (stage3 28x28 softmax
"none", gradcam 7x7 "max") peak on the disc. Labels and probabilities are random but
correlated, so AUC is between 0.5 and 1. --evil makes image 0's id and path
`<img src=x onerror=alert(1)>.png`, image 1's id `</script><script>alert(2)</script>`, and
a class name with markup.
"""
import argparse
import json

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--errors", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--measures", action="store_true")
    ap.add_argument("--unlabelled", action="store_true")
    ap.add_argument("--evil", action="store_true")
    ap.add_argument("--no-images", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images-from", default="",
                    help="folder of PNG/JPEG images (e.g. attnscope synth's images/) to cycle "
                         "through instead of drawn discs (benchmarks: realistic JPEG sizes)")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n, s = a.n, a.size
    str_t = h5py.string_dtype("utf-8")
    classes = ["benign", "malignant"] if not a.evil else ["benign", "<b>malignant</b>"]

    ids = [f"img_{i:05d}" for i in range(n)]
    paths = [f"/data/in/{x}.jpg" for x in ids]
    if a.evil:
        ids[0] = "<img src=x onerror=alert(1)>.png"
        paths[0] = "/data/in/<img src=x onerror=alert(1)>.png"
        if n > 1:
            ids[1] = "</script><script>alert(2)</script>"
    truth = rng.integers(0, 2, n).astype(np.int64)
    if a.unlabelled:
        truth[:] = -1
    # p(malignant): noisy around the label, so AUC lies strictly between 0.5 and 1.
    base = truth.clip(0, 1) * 0.35 + 0.32
    p1 = np.clip(base + rng.normal(0, 0.2, n), 0.001, 0.999).astype(np.float32)
    prob = np.stack([1 - p1, p1], axis=1).astype(np.float32)
    threshold = 0.5
    pred = (p1 >= threshold).astype(np.int64)

    # Images with a dark disc (or real files); maps peaking on the disc.
    yy, xx = np.mgrid[0:s, 0:s]
    centres = rng.uniform(0.2, 0.8, (n, 2))
    sources = []
    if a.images_from:
        import glob
        import cv2
        for path in sorted(glob.glob(a.images_from + "/*.png") + glob.glob(a.images_from + "/*.jpg")):
            im = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            sources.append(cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA))
        assert sources, "no images in " + a.images_from

    def image(i):
        if sources:
            return sources[i % len(sources)]
        im = np.full((s, s, 3), (200, 170, 150), np.uint8)
        cx, cy = centres[i] * s
        im[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.12 * s) ** 2] = (70, 40, 30)
        return im

    def bump(h, i):
        gy, gx = (np.mgrid[0:h, 0:h] + 0.5) / h
        cx, cy = centres[i]
        return np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * 0.1 ** 2))

    stage3 = np.stack([bump(28, i) for i in range(n)]).astype(np.float32)
    stage3 /= stage3.sum(axis=(1, 2), keepdims=True)  # softmax weights: sum to 1
    gradcam = np.stack([bump(7, i) for i in range(n)]).astype(np.float32)
    gradcam /= gradcam.max(axis=(1, 2), keepdims=True)

    with h5py.File(a.out, "w") as f:
        attrs = {
            "format": "attnscope-results",
            "schema_version": "1",
            "attnscope_version": "0.1.0",
            "model_path": "runs/<model>.h5" if a.evil else "runs/model.h5",
            "model_config": json.dumps({"arch": "attn_small", "num_classes": 2, "image_size": s}),
            "model_checksum": "fnv1a64:0123456789abcdef",
            "preprocessing_config": json.dumps({"steps": [{"resize": s}], "note": "</script>"}),
            "class_names": json.dumps(classes),
            "threshold": json.dumps(threshold),
            "temperature": "1",
            "maps": json.dumps(["stage3", "gradcam"]),
            "tta": "dihedral8" if a.tta else "none",
            "shard": "0/1",
            "command_line": "attnscope classify --model runs/model.h5 --input in/ --out out/",
            "started_at": "2026-11-30T12:00:00Z",
            "finished_at": "2026-11-30T12:01:00Z",
            "num_images": str(n),
            "num_errors": str(a.errors),
        }
        if a.measures:
            attrs["faithfulness"] = json.dumps({"steps": 32, "substrate": "zero"})
        for k, v in attrs.items():
            f.attrs[k] = v
        g = f.create_group("images")
        g.create_dataset("id", data=ids, dtype=str_t)
        g.create_dataset("source_path", data=paths, dtype=str_t)
        g.create_dataset("index", data=np.arange(n, dtype=np.int64))
        g.create_dataset("label", data=truth)
        if not a.no_images:
            d = g.create_dataset("preprocessed", (n, s, s, 3), np.uint8, chunks=(1, s, s, 3),
                                 compression="gzip", compression_opts=4)
            for lo in range(0, n, 256):  # in blocks: 5,000 images at 224 px need no 750 MB
                d[lo:lo + 256] = np.stack([image(i) for i in range(lo, min(n, lo + 256))])
        p = f.create_group("predictions")
        p.create_dataset("logits", data=np.log(prob))
        p.create_dataset("probability", data=prob)
        p.create_dataset("label", data=pred)
        if a.tta:
            sd = rng.uniform(0, 0.1, (n, 2)).astype(np.float32)
            p.create_dataset("probability_std", data=sd)
        att = f.create_group("attention")
        for name, m, norm in (("stage3", stage3, "none"), ("gradcam", gradcam, "max")):
            d = att.create_dataset(name, data=m, chunks=(1,) + m.shape[1:], compression="gzip")
            d.attrs["source"] = "model" if name == "stage3" else "gradcam"
            d.attrs["normalization"] = norm
            d.attrs["upsample"] = "bilinear"
            d.attrs["align_corners"] = "false"
            d.attrs["target_size"] = json.dumps([s, s])
            d.attrs["native_size"] = json.dumps(list(m.shape[1:]))
        if a.measures:
            me = f.create_group("measures")
            for mp in ("stage3", "gradcam", "random", "gaussian"):
                gm = me.create_group(mp)
                if mp != "gaussian":
                    gm.create_dataset("deletion_auc", data=rng.uniform(0, 1, n).astype(np.float32))
                    gm.create_dataset("insertion_auc", data=rng.uniform(0, 1, n).astype(np.float32))
                if mp != "random":
                    v = rng.uniform(0, 1, n).astype(np.float32)
                    v[-1] = np.nan  # an image without a mask
                    gm.create_dataset("mass_in_mask", data=v)
        e = f.create_group("errors")
        eids = [f"bad_{i}" for i in range(a.errors)]
        if a.evil and a.errors:
            eids[0] = "<script>alert(3)</script>"
        e.create_dataset("id", data=eids, dtype=str_t)
        e.create_dataset("path", data=[f"/data/in/{x}.jpg" for x in eids], dtype=str_t)
        e.create_dataset("index", data=np.arange(n, n + a.errors, dtype=np.int64))
        e.create_dataset("reason", data=["corrupt or truncated JPEG"] * a.errors, dtype=str_t)


if __name__ == "__main__":
    main()
