#!/usr/bin/python3
"""attnscope train vs the same training in PyTorch-Python, same model and weights, side by side.

Both sides train ARCH (attn_small at 128 px, attn_resnet18 at 224 px, vit_mini_patch8 at
64 px) on ../shared/data/isic-uda1 from images decoded and preprocessed once (attnscope:
`--cache`, an HDF5 cache; Python: one in-memory uint8 tensor, what a practitioner caches), with
attnscope's default augmentation (horizontal flip, vertical flip and a 90-degree rotation, each with
probability 0.5) applied per sample in the loader workers, batch 32, AdamW (lr 1e-3, weight
decay 0.05, constant rate), cross-entropy, channels-last for the CNNs (as attnscope runs
them; its ViT takes the input as it comes), the same number of model threads and
loader workers, and GOMP_SPINCOUNT=3000 and OPENBLAS_THREAD_TIMEOUT=16 (what attnscope's
launcher sets for it; bench/gomp_env.py sets them for the Python process before torch is
loaded). The starting weights
are the same (attnscope's checkpoint from `bench_classify checkpoint`, loaded by name into the
torch.nn models of bench/classify_vs_pytorch.py). attnscope's training images/s per epoch come
from RUN/timing.jsonl (training loop only, validation excluded); the Python side is timed the
same way. The first epoch is left out of the median (start-up, caches). Per epoch and side:
the "loader CPU share" (the loader's CPU seconds over all the CPU seconds of the epoch's
training: attnscope's loader threads from RUN/timing.jsonl, Python's DataLoader worker processes
from /proc) and the "wait share" (the share of the epoch's wall time the training loop waited
for a batch).

Both sides run in alternating rounds (`--rounds`, default 3) and the ratio is the median of
the rounds' ratios.

  bench/train_vs_pytorch.py [--arch attn_small] [--epochs 4] [--rounds 3] [--threads 2]
      [--malloc attnscope|glibc|jemalloc|tcmalloc]   (Python's malloc; default: attnscope's settings)
      [--python-model eager|optimised] [--python-thp] [--precision fp32|bf16]
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gomp_env  # noqa: E402,F401  (before torch: GOMP_SPINCOUNT, OPENBLAS_THREAD_TIMEOUT)
import preload_malloc  # noqa: E402,F401  (after gomp_env, before torch)

import cv2
import numpy as np
import torch

from classify_vs_pytorch import (MODELS, ROOT, AdditiveAttention, load_attnscope_checkpoint,  # noqa: E402,E501
                                 set_attnscope_malloc)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def decode(path, size):
    rgb = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    s = size / min(h, w)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return torch.from_numpy(np.ascontiguousarray(rgb[top:top + size, left:left + size]))


class Cached(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].permute(2, 0, 1).float().div_(255).sub_(MEAN).div_(STD)
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        if torch.rand(()) < 0.5:
            x = x.flip(1)
        if torch.rand(()) < 0.5:
            x = torch.rot90(x, 1, (1, 2))
        return x.contiguous(), self.labels[i]


def process_cpu(pid):
    """CPU seconds (user + system) of process `pid` so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_epochs(model, images, labels, epochs, batch, workers, channels_last, bf16=False):
    loader = torch.utils.data.DataLoader(Cached(images, labels), batch_size=batch, shuffle=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    rates, shares, cpu_shares = [], [], []
    for _ in range(epochs):
        n, waited, start = 0, 0.0, time.perf_counter()
        it = iter(loader)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        workers_before = sum(process_cpu(pid) for pid in pids)
        main_before = time.process_time()
        while True:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            waited += time.perf_counter() - t0
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            opt.zero_grad(set_to_none=True)
            # bf16: the forward in autocast, the loss in float32 (as attnscope's --precision bf16)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)[0]
            loss_fn(logits.float(), y).backward()
            opt.step()
            n += len(y)
        wall = time.perf_counter() - start
        loader_cpu = sum(process_cpu(pid) for pid in pids) - workers_before
        rates.append(n / wall)
        shares.append(waited / wall)
        cpu_shares.append(loader_cpu / max(loader_cpu + time.process_time() - main_before, 1e-9))
    return rates, shares, cpu_shares


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="attn_small",
                   choices=["attn_small", "attn_resnet18", "vit_mini_patch8"])
    p.add_argument("--size", type=int, default=0,
                   help="default: 128 (attn_small), 224 (attn_resnet18), 64 (vit_mini_patch8)")
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "isic-uda1"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating attnscope/Python rounds; medians over them")
    p.add_argument("--malloc", default="attnscope",
                   choices=["attnscope", "glibc", "jemalloc", "tcmalloc"],
                   help="Python's malloc: attnscope = the settings attnscope gives itself "
                        "(docs/architecture.md), glibc = glibc's defaults, jemalloc/tcmalloc = "
                        "preloaded as PyTorch's tuning guide advises (bench/preload_malloc.py)")
    p.add_argument("--python-thp", action="store_true",
                   help="start Python with glibc.malloc.hugetlb=1 (its heaps advised for huge "
                        "pages, as attnscope's are; bench/preload_malloc.py)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: attnscope --precision bf16 and the Python forward under "
                        "torch.autocast('cpu', dtype=torch.bfloat16)")
    p.add_argument("--python-model", default="eager", choices=["eager", "optimised"],
                   help="optimised: the additive attention's key projection run as a 1x1 "
                        "convolution, as attnscope's is (docs/vision.md); eager: nn.Linear, "
                        "as a practitioner writes it")
    args = p.parse_args()
    size = args.size or {"attn_small": 128, "attn_resnet18": 224, "vit_mini_patch8": 64}[args.arch]
    if args.malloc == "attnscope":
        set_attnscope_malloc()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    work = tempfile.mkdtemp()
    rounds = []
    try:
        ckpt = os.path.join(work, "init.h5")
        subprocess.run([os.path.join(args.build, "bin", "bench_classify"), "checkpoint", args.arch,
                        str(size), ckpt], check=True)
        # Python: the same number of training images (80 % of the data, first rows), decoded
        # once.
        rows = list(csv.DictReader(open(os.path.join(args.data, "labels.csv"))))
        n_train = round(0.8 * len(rows))
        rows = rows[:n_train]
        key = "image_id" if "image_id" in rows[0] else list(rows[0])[0]
        label_key = "label" if "label" in rows[0] else list(rows[0])[1]
        names = sorted({r[label_key] for r in rows})
        images = torch.stack([decode(os.path.join(args.data, "images", r[key] + ".jpg"), size)
                              for r in rows])
        labels = torch.tensor([names.index(r[label_key]) for r in rows])
        # Rounds alternate the two sides, so a slow spell of a shared machine hits both.
        for r in range(args.rounds):
            # attnscope: the 80 % training split of its own (grouped, stratified) split.
            run = os.path.join(work, f"run{r}")
            subprocess.run([os.path.join(args.build, "bin", "attnscope"), "--threads",
                            str(args.threads), "train", "--data",
                            os.path.join(args.data, "labels.csv"), "--model", args.arch, "--size",
                            str(size), "--val-split", "0.2", "--epochs", str(args.epochs),
                            "--batch-size", str(args.batch), "--optimizer", "adamw", "--lr",
                            "1e-3", "--weight-decay", "0.05", "--schedule", "constant", "--loss",
                            "ce", "--init", ckpt, "--cache", "--workers", str(args.workers),
                            "--precision", args.precision,
                            "--seed", "1", "--quiet", "--out", run], check=True,
                           stdout=subprocess.DEVNULL)
            timing = [json.loads(line) for line in open(os.path.join(run, "timing.jsonl"))]
            ours = [t["images_per_s"] for t in timing]
            ours_cpu = [t["cpu_s"] / t["wall_s"] for t in timing]
            ours_data = [t.get("loader_cpu_share", float("nan")) for t in timing]
            ours_wait = [t.get("loader_wait_share", float("nan")) for t in timing]
            model = MODELS[args.arch]()
            load_attnscope_checkpoint(model, ckpt)
            if args.python_model == "optimised":
                for m in model.modules():
                    if isinstance(m, AdditiveAttention):
                        m.keys_by_conv = True
            cnn = not args.arch.startswith("vit")  # attnscope's CNNs run channels-last
            if cnn:
                model = model.to(memory_format=torch.channels_last)
            py, share, py_data = python_epochs(model, images, labels, args.epochs, args.batch,
                                               args.workers, cnn, args.precision == "bf16")
            a, b = statistics.median(ours[1:] or ours), statistics.median(py[1:] or py)
            rounds.append((a, b))
            print(f"round {r + 1}: attnscope images/s per epoch {[round(x, 2) for x in ours]} "
                  f"(CPU/wall {[round(x, 2) for x in ours_cpu]}, loader CPU share "
                  f"{[round(x, 3) for x in ours_data]}, wait share "
                  f"{[round(x, 3) for x in ours_wait]}); PyTorch-Python "
                  f"{[round(x, 2) for x in py]} (loader CPU share "
                  f"{[round(x, 3) for x in py_data]}, wait share "
                  f"{[round(x, 3) for x in share]}); ratio {a / b:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a = statistics.median(x for x, _ in rounds)
    b = statistics.median(y for _, y in rounds)
    ratio = statistics.median(x / y for x, y in rounds)
    print(f"{args.arch} {size}px batch {args.batch}, {args.precision}, Python model {args.python_model}{' (heaps on huge pages)' if args.python_thp else ''}, "
          f"{args.threads} model threads, {args.workers} "
          f"loader workers, epochs 2..{args.epochs}, median of {len(rounds)} alternating rounds: "
          f"attnscope {a:.2f} images/s, PyTorch-Python {b:.2f} images/s, ratio {ratio:.2f}")

if __name__ == "__main__":
    main()
