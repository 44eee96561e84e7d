#!/usr/bin/python3
"""attnscope classify vs the same job in PyTorch-Python, same weights, side by side.

The job: N dermoscopy JPEGs -> decode, resize (shorter side) + centre crop to 224 px,
normalise -> the model (attn_small, attn_resnet18 or resnet18, 2 classes) -> softmax
probabilities, the model's own attention maps and a Grad-CAM map of the trunk's last feature
map for the predicted class -> one HDF5 file with ids, paths, the preprocessed uint8 input (one
deflated chunk per image), logits, probabilities, predicted labels and every map (one deflated
chunk per image), appended per batch.

The Python side is written as a practitioner would: cv2 decode and preprocessing in a
torch.utils.data.DataLoader (worker processes), the model in torch.nn (torchvision's resnet18
trunk; the attention heads written here from docs/vision.md) in eval mode and channels-last,
Grad-CAM either as pytorch-grad-cam computes it (`--gradcam full`: one forward with autograd,
backward through the whole model) or as its best users would (`--gradcam head`: the trunk
under no_grad, autograd through the head only, as attnscope does), h5py writing. The weights are
attnscope's checkpoint (bench_classify checkpoint ARCH 224), loaded by name with strict=True,
and the logits of both sides on the same images are compared as a check that both run the
same model. Both sides get the same batch size, the same cores (torch.set_num_threads for the
model, DataLoader workers for decoding; attnscope --threads N for LibTorch and classify
--threads for its decoding workers) and the same OpenMP setting (GOMP_SPINCOUNT=3000, what
attnscope sets for itself). Rounds alternate; medians are printed with the ratio
attnscope / PyTorch (the issue's goal: >= 1.3), three ways: the Python job in this process
with its model built and loaded before the clock starts (attnscope's time includes its
process start); both at steady state (N - batch) / (T(N) - T(batch)), without either side's
fixed costs; and both as processes of their own, timed from outside as a user's `time`
would (Python started, torch imported, the model built and loaded inside the clock).
`--python-model optimised` gives the Python model attnscope's inference steps
(same_inference_steps: BatchNorm folded, the key projection as a 1x1 convolution).

  bench/classify_vs_pytorch.py [--arch attn_small] [--gradcam full|head] [--images 500]
      [--rounds 3] [--batch 16] [--workers 2] [--threads 2] [--build build]
      [--malloc attnscope|glibc|jemalloc|tcmalloc] [--python-model eager|optimised]
      [--python-thp]
"""

import argparse
import ctypes
import glob
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
import h5py
import numpy as np
import torch
import torch.nn as nn
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# ---- the models, in torch.nn, with attnscope's tensor names --------------------------------

class PcAttention(nn.Module):
    """Learn to Pay Attention's parametrised compatibility, gated by the global feature g:
    s_i = u . (P l_i + g), softmax over positions, context = sum_i a_i P l_i."""

    def __init__(self, c, cg):
        super().__init__()
        self.projector = nn.Conv2d(c, cg, 1, bias=False) if c != cg else None
        self.u = nn.Parameter(torch.zeros(cg))

    def forward(self, local, g):
        b, _, h, w = local.shape
        p = self.projector(local) if self.projector is not None else local
        v = p.flatten(2).transpose(1, 2)                     # (B, hw, Cg)
        a = torch.softmax((v + g[:, None, :]) @ self.u, 1)   # (B, hw)
        return (a[:, :, None] * v).sum(1), a.view(b, h, w)


class AdditiveScore(nn.Module):
    def __init__(self, q, k, hidden):
        super().__init__()
        self.query_proj = nn.Linear(q, hidden, bias=False)
        self.key_proj = nn.Linear(k, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) score of every position against g: s_i = v . relu(W_q g + W_k l_i + b),
    softmax over positions, context = sum_i a_i l_i."""

    def __init__(self, c, cg, hidden=256):
        super().__init__()
        self.score = AdditiveScore(cg, c, hidden)
        self.keys_by_conv = False  # set by same_inference_steps

    def forward(self, local, g):
        b, _, h, w = local.shape
        v = local.flatten(2).transpose(1, 2)                 # (B, hw, C)
        if self.keys_by_conv:  # the key projection as a 1x1 convolution, as attnscope runs it
            kp = self.score.key_proj
            k = nn.functional.conv2d(local, kp.weight[:, :, None, None], kp.bias)
            k = k.flatten(2).transpose(1, 2)
        else:
            k = self.score.key_proj(v)
        s = self.score.v(torch.relu(self.score.query_proj(g)[:, None, :] + k))[..., 0]
        a = torch.softmax(s, 1)
        return (a[:, :, None] * v).sum(1), a.view(b, h, w)


class AttnResNet18(nn.Module):
    """resnet18 trunk; attention at layer2 and layer3 ("stage2", "stage3") gated by g."""

    def __init__(self, num_classes=2):
        super().__init__()
        r = torchvision.models.resnet18()
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.attention = nn.ModuleList([PcAttention(128, 512), PcAttention(256, 512)])
        self.classifier = nn.Linear(512 * 3, num_classes)
        self.names = ["stage2", "stage3"]

    def trunk(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l2 = self.layer2(self.layer1(x))
        l3 = self.layer3(l2)
        return [l2, l3], self.layer4(l3)

    def forward(self, x):
        taps, last = self.trunk(x)
        return self.head(taps, last) + (last,)

    def head(self, taps, last):
        g = last.mean((2, 3))
        parts, maps = [g], {}
        for name, attn, local in zip(self.names, self.attention, taps):
            c, m = attn(local, g)
            parts.append(c)
            maps[name] = m
        return self.classifier(torch.cat(parts, 1)), maps


class AttnSmall(nn.Module):
    """attnscope's small_cnn (VGG-style, batch norm, 4 blocks of 2 convs: 32, 64, 128, 256
    channels) with additive attention on blocks 3 and 4 before their pools ("stage3",
    "stage4"), gated by g = the average of the last pooled map."""

    def __init__(self, num_classes=2):
        super().__init__()
        layers, c = [], 3
        for v in [32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.attention = nn.ModuleList([AdditiveAttention(128, 256), AdditiveAttention(256, 256)])
        self.classifier = nn.Linear(256 + 128 + 256, num_classes)
        self.names = ["stage3", "stage4"]

    def trunk(self, x):
        stages = []
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                stages.append(x)
            x = m(x)
        return stages[2:4], x

    forward = AttnResNet18.forward
    head = AttnResNet18.head


class ResNet18(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        r = torchvision.models.resnet18(num_classes=num_classes)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.fc = r.fc

    def trunk(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return [], self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        taps, last = self.trunk(x)
        return self.head(taps, last) + (last,)

    def head(self, taps, last):
        return self.fc(last.mean((2, 3))), {}


class VitAttention(nn.Module):
    """timm's Attention as timm writes it (PyTorch 1.13 has no fused attention)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class VitMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), VitAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), VitMlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitMiniPatch8(nn.Module):
    """attnscope's vit_mini_patch8 (64 px, patch 8, width 128, depth 6, 4 heads) as timm's
    VisionTransformer, under timm's names (patch_embed.proj, cls_token, pos_embed, blocks,
    norm, head). Training only: no attention maps are returned."""

    def __init__(self, num_classes=2, dim=128, depth=6, heads=4, patch=8, image_size=64):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image_size // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[VitBlock(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0]), {}


MODELS = {"attn_small": AttnSmall, "attn_resnet18": AttnResNet18, "resnet18": ResNet18,
          "vit_mini_patch8": VitMiniPatch8}


def same_inference_steps(model):
    """What attnscope's classify does beyond a plain eval-mode model (docs/performance.md):
    every BatchNorm2d folded into the convolution before it (torch.nn.utils.fusion, as
    torch.fx's fuse does) and the additive attention's key projection run as a 1x1
    convolution. For a Python side as optimised as attnscope; a practitioner's code has
    neither."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                parent._modules[b] = nn.Identity()
        for child in parent._modules.values():
            if child is not None:
                fold(child)

    fold(model.eval())
    for m in model.modules():
        if isinstance(m, AdditiveAttention):
            m.keys_by_conv = True
    return model


def load_attnscope_checkpoint(model, path):
    with h5py.File(path, "r") as f:
        state = {}
        f.visititems(lambda n, o: state.__setitem__(n.replace("/", "."), torch.from_numpy(o[...]))
                     if isinstance(o, h5py.Dataset) and not n.startswith("train_state") else None)
    model.load_state_dict(state, strict=True)


# ---- the job --------------------------------------------------------------------------------

class Images(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        bgr = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        s = SIZE / min(h, w)
        nw, nh = max(SIZE, round(w * s)), max(SIZE, round(h * s))
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        top, left = (nh - SIZE) // 2, (nw - SIZE) // 2
        rgb = np.ascontiguousarray(rgb[top:top + SIZE, left:left + SIZE])
        x = (rgb.astype(np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), torch.from_numpy(rgb), i


def python_job(model, paths, out, batch, workers, gradcam):
    loader = torch.utils.data.DataLoader(Images(paths), batch_size=batch, num_workers=workers,
                                         shuffle=False)
    text = h5py.string_dtype("utf-8")
    with h5py.File(out, "w") as f:
        sets = {}

        def append(name, value, n):
            value = np.asarray(value)
            if name not in sets:
                chunk = (1,) + value.shape[1:] if value.ndim >= 3 else (256,) + value.shape[1:]
                big = value.ndim >= 3
                sets[name] = f.create_dataset(
                    name, (0,) + value.shape[1:], text if value.dtype == object else value.dtype,
                    maxshape=(None,) + value.shape[1:], chunks=chunk,
                    compression="gzip" if big else None, compression_opts=4 if big else None)
            d = sets[name]
            d.resize(n + len(value), axis=0)
            d[n:n + len(value)] = value

        n = 0
        for x, rgb, idx in loader:
            x = x.contiguous(memory_format=torch.channels_last)
            if gradcam == "full":
                # pytorch-grad-cam's way: a forward with autograd, backward through everything.
                model.zero_grad(set_to_none=True)
                logits, maps, last = model(x)
                last.retain_grad()
                pred = logits.argmax(1)
                logits.gather(1, pred[:, None]).sum().backward()
                grads, last = last.grad, last.detach()
            else:
                # The trunk without a graph, the head with one: what attnscope does.
                with torch.no_grad():
                    taps, last = model.trunk(x)
                last = last.detach().requires_grad_(True)
                logits, maps = model.head(taps, last)
                pred = logits.argmax(1)
                grads = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), last)[0]
                last = last.detach()
            cam = torch.relu((grads.mean((2, 3), keepdim=True) * last).sum(1))
            cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            logits = logits.detach()
            append("images/id", np.array([os.path.splitext(os.path.basename(paths[i]))[0]
                                          for i in idx], dtype=object), n)
            append("images/source_path", np.array([paths[i] for i in idx], dtype=object), n)
            append("images/preprocessed", rgb.numpy(), n)
            append("predictions/logits", logits.numpy(), n)
            append("predictions/probability", torch.softmax(logits, 1).numpy(), n)
            append("predictions/label", pred.numpy(), n)
            for name, m in maps.items():
                append("attention/" + name, m.detach().numpy(), n)
            append("attention/gradcam", cam.numpy(), n)
            f.flush()
            n += len(idx)
    return n


def set_attnscope_malloc():
    """runtime::keep_freed_memory_for_reuse for this process (and its forked DataLoader
    workers): glibc's mallopt at run time, as attnscope calls it."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    ok = (libc.mallopt(m_mmap_threshold, 512 << 20) == 1 and
          libc.mallopt(m_trim_threshold, 1 << 30) == 1 and
          libc.mallopt(m_arena_max, max(2, len(os.sched_getaffinity(0)))) == 1)
    if not ok:
        raise SystemExit("mallopt failed")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="attn_small", choices=sorted(MODELS))
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--exe", default="",
                   help="the attnscope program (default: BUILD/bin/attnscope)")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "isic-uda1",
                                                  "images"))
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="decoding workers on both sides")
    p.add_argument("--threads", type=int, default=2, help="model threads on both sides")
    p.add_argument("--gradcam", default="full", choices=["full", "head"],
                   help="Python's Grad-CAM: full = pytorch-grad-cam's (autograd through the whole "
                        "model), head = the trunk without a graph and autograd through the head "
                        "only (attnscope's way)")
    p.add_argument("--malloc", default="attnscope",
                   choices=["attnscope", "glibc", "jemalloc", "tcmalloc"],
                   help="Python's malloc: attnscope = the settings attnscope gives itself "
                        "(freed blocks up to 512 MiB kept for reuse, docs/architecture.md; a "
                        "practitioner would use jemalloc or TCMalloc to the same end), glibc = "
                        "glibc's defaults, jemalloc/tcmalloc = preloaded as PyTorch's tuning "
                        "guide advises (bench/preload_malloc.py)")
    p.add_argument("--python-thp", action="store_true",
                   help="start Python with glibc.malloc.hugetlb=1 (its heaps advised for huge "
                        "pages, as attnscope's are; bench/preload_malloc.py)")
    p.add_argument("--python-model", default="eager", choices=["eager", "optimised"],
                   help="eager = the model in eval mode, as a practitioner runs it; optimised = "
                        "with attnscope's inference steps too (BatchNorm folded into the "
                        "convolutions, attention key projections as 1x1 convolutions)")
    p.add_argument("--job", nargs=3, metavar=("CKPT", "LIST", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.malloc == "attnscope":
        set_attnscope_malloc()
    torch.set_num_threads(args.threads)

    def python_model(ckpt):
        model = MODELS[args.arch]()
        load_attnscope_checkpoint(model, ckpt)
        model = model.eval()
        if args.python_model == "optimised":
            model = same_inference_steps(model)
        return model.to(memory_format=torch.channels_last)

    if args.job:
        # The Python job as a user runs it: this process started, torch imported, the model
        # built and its weights read, then the job (timed from outside, like attnscope's).
        ckpt, listing, out = args.job
        python_job(python_model(ckpt), open(listing).read().split("\n")[:-1], out, args.batch,
                   args.workers, args.gradcam)
        return
    exe = args.exe or os.path.join(args.build, "bin", "attnscope")
    if args.exe:
        args.build = os.path.dirname(os.path.dirname(os.path.abspath(args.exe)))
    paths = sorted(glob.glob(os.path.join(args.data, "*.jpg")))[:args.images]
    work = tempfile.mkdtemp()
    try:
        ckpt = os.path.join(work, args.arch + ".h5")
        subprocess.run([os.path.join(args.build, "bin", "bench_classify"), "checkpoint", args.arch,
                        str(SIZE), ckpt], check=True)
        model = python_model(ckpt)
        listing = os.path.join(work, "inputs.txt")
        with open(listing, "w") as f:
            f.write("\n".join(paths) + "\n")

        # One batch alone as well, on both sides: (N - batch) / (T(N) - T(batch)) is the
        # steady-state rate, without the fixed costs (attnscope: process start, LibTorch
        # loaded, checkpoint verified; Python: DataLoader workers, the output file; the Python
        # model is already built and loaded in this process, attnscope's is not).
        first = os.path.join(work, "first.txt")
        with open(first, "w") as f:
            f.write("\n".join(paths[:args.batch]) + "\n")

        def attnscope_job(listing_path):
            run = os.path.join(work, "run")
            shutil.rmtree(run, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([exe, "--threads", str(args.threads), "classify", "--model", ckpt,
                            "--input", "@" + listing_path, "--out", run, "--batch-size",
                            str(args.batch), "--threads", str(args.workers)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - start

        def python_process(listing_path):
            # The same Python job in a process of its own, started as a user starts it: the
            # environment this process was given (GOMP_SPINCOUNT, and the --malloc library
            # preloaded from the start, without the re-execution the benchmark uses).
            env = dict(os.environ)
            lib = preload_malloc.LIBS.get(args.malloc)
            if lib:
                env.update({"LD_PRELOAD": lib, preload_malloc.MARKER: lib})
                if args.malloc == "jemalloc":
                    env["MALLOC_CONF"] = preload_malloc.JEMALLOC_CONF
            if args.python_thp:
                env.update(preload_malloc.with_thp(env))
            command = [sys.executable, os.path.abspath(__file__), "--arch", args.arch,
                       "--batch", str(args.batch), "--workers", str(args.workers), "--threads",
                       str(args.threads), "--gradcam", args.gradcam, "--malloc", args.malloc,
                       "--python-model", args.python_model]
            command += ["--python-thp"] if args.python_thp else []
            command += ["--job", ckpt, listing_path, os.path.join(work, "py_process.h5")]
            start = time.perf_counter()
            subprocess.run(command, check=True, env=env)
            return time.perf_counter() - start

        def timed_python(some):
            start = time.perf_counter()
            python_job(model, some, os.path.join(work, "py.h5"), args.batch, args.workers,
                       args.gradcam)
            return time.perf_counter() - start

        py, ours, py_steady, ours_steady, py_whole = [], [], [], [], []
        run = os.path.join(work, "run")
        out = os.path.join(work, "py.h5")
        extra = len(paths) - args.batch
        for r in range(args.rounds):
            t_py_1 = timed_python(paths[:args.batch])
            t_py = timed_python(paths)
            t_ours_1 = attnscope_job(first)
            t_ours = attnscope_job(listing)
            t_py_whole = python_process(listing)
            py_whole.append(len(paths) / t_py_whole)
            py.append(len(paths) / t_py)
            ours.append(len(paths) / t_ours)
            py_steady.append(extra / (t_py - t_py_1))
            ours_steady.append(extra / (t_ours - t_ours_1))
            print(f"round {r + 1}: pytorch {py[-1]:.2f} images/s, attnscope {ours[-1]:.2f} "
                  f"images/s; steady state (without the first batch's fixed costs) pytorch "
                  f"{py_steady[-1]:.2f}, attnscope {ours_steady[-1]:.2f}; pytorch as a process "
                  f"of its own {py_whole[-1]:.2f}", flush=True)
        with h5py.File(os.path.join(run, "results.h5"), "r") as a, h5py.File(out, "r") as b:
            assert len(a["images/id"]) == len(b["images/id"]) == len(paths), "images missing"
            la, lb = a["predictions/logits"][...], b["predictions/logits"][...]
            same = (la.argmax(1) == lb.argmax(1)).mean()
            maps_a, maps_b = sorted(a["attention"]), sorted(b["attention"])
            own = [m for m in maps_a if m != "gradcam" and m in maps_b]
            map_diff = max([float(np.abs(a["attention/" + m][...] - b["attention/" + m][...]).max())
                            for m in own] + [0.0])
        scale = np.abs(lb).max()
        print(f"same model: max |logit difference| {np.abs(la - lb).max():.3g} (logits up to "
              f"{scale:.3g}), same prediction for "
              f"{same:.1%}; maps attnscope {maps_a}, python {maps_b}; max |difference| of "
              f"{own}: {map_diff:.3g}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(ours), statistics.median(py)
    ratio = statistics.median([x / y for x, y in zip(ours, py)])
    steady = statistics.median([x / y for x, y in zip(ours_steady, py_steady)])
    whole = statistics.median([x / y for x, y in zip(ours, py_whole)])
    print(f"{args.arch} 224px batch {args.batch}, {len(paths)} images, Python Grad-CAM "
          f"{args.gradcam}, Python model {args.python_model}{' (heaps on huge pages)' if args.python_thp else ''}, {args.threads} model "
          f"threads, {args.workers} decoding workers: attnscope {a:.2f} images/s, "
          f"PyTorch-Python {b:.2f} images/s, ratio {ratio:.2f} (median of the rounds' ratios; "
          f"the Python model built and loaded before the clock starts); steady state: "
          f"attnscope {statistics.median(ours_steady):.2f}, PyTorch-Python "
          f"{statistics.median(py_steady):.2f} images/s, ratio {steady:.2f}; both as processes "
          f"of their own (Python started, torch imported, model built and loaded inside the "
          f"clock, as attnscope's start-up is): PyTorch-Python "
          f"{statistics.median(py_whole):.2f} images/s, ratio {whole:.2f}")


if __name__ == "__main__":
    main()
