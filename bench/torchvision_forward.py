#!/usr/bin/python3
"""attnscope resnet18 forward vs torchvision's in PyTorch-Python, same weights, side by side.

Builds torchvision's resnet18 (seeded, 2 classes), exports it with
tools/python/export_weights.py, then alternates rounds of (a) timing torchvision's forward
here and (b) running `bench_vision --resnet18-checkpoint=...` on the same weights, and prints
the median images/s of each at 224 px for batch 1 and 16 and their ratio (attnscope /
torchvision; goal >= 1.0). Both sides use every core of the process's affinity mask, eval mode
and inference mode.

  bench/torchvision_forward.py --bench build/bin/bench_vision [--rounds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
import export_weights  # noqa: E402

SIZE = 224


def time_torchvision(model, batch, min_time):
    x = torch.randn(batch, 3, SIZE, SIZE)
    with torch.inference_mode():
        model(x)  # warm-up
        n, start = 0, time.perf_counter()
        while True:
            model(x)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return n * batch / elapsed


def time_attnscope(bench, checkpoint, batches):
    out = subprocess.run(
        [bench, f"--resnet18-checkpoint={checkpoint}",
         "--benchmark_filter=BM_Forward/resnet18/", "--benchmark_format=json"],
        check=True, capture_output=True, text=True).stdout
    rates = {}
    for b in json.loads(out)["benchmarks"]:
        batch = int(b["name"].split("batch:")[1].split("/")[0])
        if batch in batches:
            rates[batch] = b["images/s"]
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=os.path.join(ROOT, "build", "bin", "bench_vision"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    args = parser.parse_args()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    batches = [1, 16]
    with tempfile.TemporaryDirectory() as tmp:
        pth, ckpt = os.path.join(tmp, "resnet18.pth"), os.path.join(tmp, "resnet18.h5")
        torch.save(model.state_dict(), pth)
        export_weights.main([pth, ckpt])
        python = {b: [] for b in batches}
        cpp = {b: [] for b in batches}
        for _ in range(args.rounds):
            for b in batches:
                python[b].append(time_torchvision(model, b, args.min_time))
            for b, rate in time_attnscope(args.bench, ckpt, batches).items():
                cpp[b].append(rate)
    print(f"resnet18 forward, 224 px, {threads} threads, median of {args.rounds} alternating "
          f"rounds (torch {torch.__version__}, torchvision {torchvision.__version__})")
    print("| batch | torchvision (Python) images/s | attnscope (C++) images/s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for b in batches:
        p, c = statistics.median(python[b]), statistics.median(cpp[b])
        print(f"| {b} | {p:.2f} | {c:.2f} | {c / p:.2f} |")


if __name__ == "__main__":
    main()
