#!/usr/bin/python3
"""Turns torchvision / timm weights into an attnscope checkpoint (.h5).

SOURCE is either a file holding a state_dict (.pth/.pt; a dict with a "state_dict" or "model"
entry works too) or a model name (resnet18, resnet34, resnet50, vgg16, vgg16_bn,
vit_tiny_patch16_224, ...): then torchvision or timm builds it with pretrained weights, which
needs that package and internet access.

The checkpoint holds one dataset per tensor at the root under its dotted name, and the root
attributes format, format_version, attnscope_version, model_config, preprocessing_config,
class_names, provenance and extra (JSON strings) -- see pipeline/checkpoint.h.

AttnMel (Yan et al. 2019, github.com/SaoYan/IPMI2019-AttnMel, models.AttnVGG) state_dicts are
recognised by their names and become attnscope's attn_vgg16: the mapping is the table above
ATTNMEL_BLOCK_START.

A ViT state_dict with Shifted Patch Tokenization (`patch_embed.norm` over each patch's (5·C, p, p)
values) or Locality Self-Attention (`blocks.N.attn.scale`, one per head) -- attnscope's own
layout (train --shifted-patches / --locality-attention) -- gets those keys in its model_config;
so does one with a convolutional stem (`patch_embed.stem.N`, Xiao et al. 2021; train --conv-stem).

Examples:
  export_weights.py resnet18.pth resnet18.h5
  export_weights.py resnet18 resnet18-imagenet.h5                  # downloads
  export_weights.py resnet18.pth backbone.h5 --backbone-only       # for attn_resnet18 etc.
  export_weights.py vit.pth vit.h5 --arch vit_small_patch16 --image-size 224
  export_weights.py attnmel.pth attn_vgg16.h5 --normalizer sigmoid --mean ... --std ...
"""

import argparse
import datetime
import json
import os
import functools
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

FORMAT = "attnscope-checkpoint"
FORMAT_VERSION = "1"
EXPORTER_VERSION = "0.1.0"

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# timm's ViT weights (augreg) are normalised with 0.5 / 0.5.
INCEPTION_MEAN = [0.5, 0.5, 0.5]
INCEPTION_STD = [0.5, 0.5, 0.5]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=None)
def presets():
    """The image presets as attnscope defines them, {name: preset}, from `attnscope presets
    --json` (models/vision/presets.cpp is their one definition). The program is $ATTNSCOPE,
    else build/bin/attnscope of this checkout, else attnscope on the PATH."""
    exe = os.environ.get("ATTNSCOPE") or os.path.join(REPO, "build", "bin", "attnscope")
    if not os.path.exists(exe):
        exe = shutil.which("attnscope") or exe
    try:
        out = subprocess.run([exe, "presets", "--json"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        fail(f"cannot ask {exe} for its presets ({e}); build attnscope or set $ATTNSCOPE")
    return {p["arch"]: p for p in json.loads(out)["presets"]}


def vit_presets():
    """ViT preset -> (embed_dim, depth, heads, patch)."""
    return {name: (p["embed_dim"], p["depth"], p["num_heads"], p["patch_size"])
            for name, p in presets().items() if p["family"] == "vit"}


def cnn_presets():
    """The plain CNN presets (torchvision's ResNets and VGGs, small_cnn)."""
    return [name for name, p in presets().items() if p["family"] in ("resnet", "vgg")]


# The attention-CNN presets whose whole checkpoint (not only the backbone) this converts.
ATTN_PRESETS = ["attn_vgg16"]

# AttnMel's AttnVGG -> attnscope's attn_vgg16, by name (the tensors are the same, shapes too):
#   conv_block{k}.{i}.*       -> features.{ATTNMEL_BLOCK_START[k] + i}.*
#       AttnMel's conv_block1..5 are torchvision vgg16_bn's `features` cut at the max-pools
#       (features[0:6], [7:13], [14:23], [24:33], [34:43]); it applies the pools with
#       F.max_pool2d, attnscope keeps them at features.6, .13, .23, .33, .43.
#   attn1.{W_l,W_g,phi}.*     -> attention.0.{W_l,W_g,phi}.*   (pool-3, gated by pool-5)
#   attn2.{W_l,W_g,phi}.*     -> attention.1.{W_l,W_g,phi}.*   (pool-4, gated by pool-5)
#   cls.*                     -> classifier.*                  (on concat(g, g1, g2))
# A leading "module." (nn.DataParallel) is dropped. AttnMel's normalize_attn=True is
# --normalizer softmax, False (its default) sigmoid.
ATTNMEL_BLOCK_START = {1: 0, 2: 7, 3: 14, 4: 24, 5: 34}
ATTNMEL_PREFIXES = {"attn1.": "attention.0.", "attn2.": "attention.1.", "cls.": "classifier."}

HEAD_PREFIXES = {"resnet": ["fc."], "vgg": ["classifier."], "vit": ["head."]}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def load_state_dict(source):
    """Returns (state_dict, provenance source description, library)."""
    if os.path.exists(source):
        # weights_only: tensors and plain containers, nothing else unpickled. A crafted .pth ran
        # any code it named (its __reduce__) before being refused as no state_dict; a whole
        # pickled model (torch.save(model)) is refused for the same reason.
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:  # a cut, empty or crafted file: one line, not a traceback
            first = (str(e).strip().splitlines() or [""])[0]
            fail(f"{source}: cannot be read as a state_dict ({type(e).__name__}: {first[:300]}); "
                 "a whole pickled model is not loaded (it could run any code): save "
                 "model.state_dict() instead")
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
        if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
            fail(f"{source}: not a state_dict (a dict of tensor names to tensors)")
        return obj, os.path.abspath(source), None
    name = source
    if name.startswith("vit_"):
        try:
            import timm
        except ImportError:
            fail(f"'{name}' is neither a file nor buildable: timm is not installed "
                 "(pip install timm, or pass a .pth state_dict)")
        model = timm.create_model(name, pretrained=True)
        return model.state_dict(), f"timm:{name}", "timm"
    try:
        import torchvision
    except ImportError:
        fail(f"'{name}' is neither a file nor buildable: torchvision is not installed")
    if not hasattr(torchvision.models, name):
        fail(f"'{name}' is neither a file nor a torchvision model name")
    try:
        model = getattr(torchvision.models, name)(weights="DEFAULT")
    except TypeError:  # torchvision < 0.13
        model = getattr(torchvision.models, name)(pretrained=True)
    return model.state_dict(), f"torchvision:{name}", "torchvision"


def attnmel_to_attnscope(sd):
    """AttnMel's AttnVGG state_dict under attnscope's attn_vgg16 names (table above)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    out, unknown = {}, []
    for name, tensor in sd.items():
        m = re.match(r"conv_block([1-5])\.(\d+)\.(.+)$", name)
        if m:
            index = ATTNMEL_BLOCK_START[int(m.group(1))] + int(m.group(2))
            out[f"features.{index}.{m.group(3)}"] = tensor
            continue
        prefix = next((p for p in ATTNMEL_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            unknown.append(name)
            continue
        out[ATTNMEL_PREFIXES[prefix] + name[len(prefix):]] = tensor
    if unknown:
        fail(f"tensors of no AttnMel AttnVGG layer: {', '.join(sorted(unknown)[:5])}")
    return out


def infer_arch(sd):
    """The attnscope preset a state_dict belongs to, from its names and shapes."""
    if any(k.endswith("attn1.W_l.weight") for k in sd):
        return "attn_vgg16"
    if "patch_embed.proj.weight" in sd:
        dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
        depth = 1 + max(int(m.group(1)) for k in sd
                        for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
        for arch, (d, n, _, p) in vit_presets().items():
            if (d, n, p) == (dim, depth, patch):
                return arch
        fail(f"ViT with embed_dim {dim}, depth {depth}, patch {patch} matches no preset; "
             "pass --arch")
    if "layer1.0.conv1.weight" in sd:
        blocks = [1 + max(int(m.group(1)) for k in sd
                          for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m)
                  for i in range(1, 5)]
        bottleneck = "layer1.0.conv3.weight" in sd
        if blocks == [2, 2, 2, 2] and not bottleneck:
            return "resnet18"
        if blocks == [3, 4, 6, 3]:
            return "resnet50" if bottleneck else "resnet34"
        fail(f"ResNet with blocks {blocks} matches no preset; pass --arch")
    if "features.0.weight" in sd:
        convs = [k for k in sd if re.match(r"features\.\d+\.weight$", k)
                 and sd[k].dim() == 4]
        bn = any(re.match(r"features\.\d+\.running_mean$", k) for k in sd)
        if len(convs) == 13:
            return "vgg16_bn" if bn else "vgg16"
        if len(convs) == 8 and bn:
            return "small_cnn"
    fail("cannot tell the architecture from the tensor names; pass --arch")


def family(arch):
    if arch.startswith("vit_"):
        return "vit"
    if arch.startswith("resnet"):
        return "resnet"
    if arch.startswith("attn_"):
        return "attn"
    return "vgg"


def num_classes_of(sd, arch):
    fam = family(arch)
    if fam == "resnet":
        return sd["fc.weight"].shape[0]
    if fam == "vit":
        return sd["head.weight"].shape[0]
    if fam == "vgg":
        last = max((k for k in sd if re.match(r"classifier\.\d+\.weight$", k)),
                   key=lambda k: int(k.split(".")[1]))
        return sd[last].shape[0]
    return sd["classifier.weight"].shape[0]


def convert(sd, arch, backbone_only, image_size):
    """attnscope tensors (name -> numpy array) from a torchvision/timm state_dict."""
    out = {}
    fam = family(arch)
    heads = HEAD_PREFIXES.get(fam, ["attention.", "classifier."])
    for name, tensor in sd.items():
        if backbone_only and any(name.startswith(p) for p in heads):
            continue
        t = tensor.detach().cpu()
        if fam == "vit" and name == "pos_embed" and image_size:
            t = resize_pos_embed(t, image_size // vit_presets()[arch][3])
        out[name] = t.numpy()
    # timm names the ViT's norm layers / mlp like attnscope; refuse what attnscope lacks.
    if fam == "vit":
        extra = [k for k in out if k.startswith(("fc_norm.", "head_drop", "norm_pre."))
                 or ".ls1." in k or ".ls2." in k or k == "reg_token"
                 or (k.startswith("patch_embed.norm.") and not shifted_patches(out))]
        if extra:
            fail(f"tensors attnscope's ViT does not have: {', '.join(sorted(extra)[:5])}")
    return out


def shifted_patches(tensors):
    """True for a ViT with Shifted Patch Tokenization (Lee et al. 2021) in attnscope's layout:
    `patch_embed.norm` normalises each patch's (5·C, p, p) values (timm's optional patch norm
    is a LayerNorm over the embedding, one dimension)."""
    w = tensors.get("patch_embed.norm.weight")
    return w is not None and len(w.shape) == 3


def conv_stem(tensors):
    """True for a ViT with a convolutional stem (Xiao et al. 2021) in attnscope's layout:
    `patch_embed.stem.{3j, 3j+1}` the convolution and BatchNorm of block j, `patch_embed.proj`
    a 1x1 convolution."""
    return "patch_embed.stem.0.weight" in tensors


def locality_attention(tensors):
    """True for a ViT with Locality Self-Attention (Lee et al. 2021): a learned scale per head."""
    return any(re.match(r"blocks\.\d+\.attn\.scale$", k) for k in tensors)


def resize_pos_embed(pos, grid):
    """Bicubic resize of a timm position embedding (1, 1 + g*g, D) to a grid x grid layout."""
    n = pos.shape[1] - 1
    old = int(round(n ** 0.5))
    if old == grid:
        return pos
    cls, patches = pos[:, :1], pos[:, 1:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic",
                                              align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([cls, patches], dim=1)


def write_checkpoint(path, tensors, model_config, preprocessing, class_names, provenance, extra):
    # A temporary of its own beside the output (two exports to one target shared "OUT.tmp"),
    # synced, then renamed; removed on an error or a signal (main turns SIGTERM, SIGHUP and
    # SIGINT into SystemExit), so the target is the old or the new file.
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp.h5",
                               dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as any file written here (mkstemp's is private)
    try:
        write_h5(tmp, tensors, model_config, preprocessing, class_names, provenance, extra)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # a full disk: h5py raises (OSError, RuntimeError) as it writes
        try:
            os.unlink(tmp)
        except OSError:
            pass
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {path}: cannot write the checkpoint ({first[:300]}); the previous file, "
              "if any, is unchanged", file=sys.stderr)
        os._exit(1)  # h5py's exit handlers would close the failed file again (a crash)
    except BaseException:  # a signal (SystemExit): its exit status stays
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself, durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_h5(tmp, tensors, model_config, preprocessing, class_names, provenance, extra):
    with h5py.File(tmp, "w") as f:
        for name, array in sorted(tensors.items()):
            # np.ascontiguousarray would turn 0-d tensors (num_batches_tracked) into shape (1,).
            data = array if array.flags.c_contiguous else array.copy(order="C")
            f.create_dataset(name, data=data)
        attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "attnscope_version": EXPORTER_VERSION,
            "model_config": json.dumps(model_config),
            "preprocessing_config": json.dumps(preprocessing),
            "class_names": json.dumps(class_names),
            "provenance": json.dumps(provenance),
            "extra": json.dumps(extra),
        }
        for key, value in attrs.items():
            f.attrs[key] = value  # h5py: variable-length UTF-8 strings


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert torchvision/timm weights into an attnscope checkpoint.")
    parser.add_argument("source", help="state_dict file (.pth/.pt) or a model name")
    parser.add_argument("output", help="the checkpoint to write (.h5)")
    parser.add_argument("--arch", default="",
                        help="attnscope preset (default: inferred from the tensors)")
    parser.add_argument("--num-classes", type=int, default=0,
                        help="classes of the head (default: the state_dict's)")
    parser.add_argument("--image-size", type=int, default=0,
                        help="input size; a ViT's position embedding is resized to it "
                             "(default: the preset's)")
    parser.add_argument("--backbone-only", action="store_true",
                        help="leave out the head (fc / classifier / head) for a model whose "
                             "head differs; load with pipeline::load_image_backbone")
    parser.add_argument("--normalizer", default="", choices=["", "sigmoid", "softmax"],
                        help="attn_vgg16 only: the attention's normaliser (AttnMel's "
                             "normalize_attn: softmax; default: sigmoid, the paper's)")
    parser.add_argument("--class-names", default="",
                        help="comma-separated class names (default: class_0, class_1, ...)")
    parser.add_argument("--mean", default="",
                        help="comma-separated normalisation mean (default: by source)")
    parser.add_argument("--std", default="", help="comma-separated normalisation std")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):  # SystemExit: the temporary goes
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda number, frame: sys.exit(128 + number))

    sd, source, library = load_state_dict(args.source)
    sd = {k: v for k, v in sd.items()}
    arch = args.arch or infer_arch(sd)
    known = cnn_presets() + list(vit_presets()) + ATTN_PRESETS
    if arch not in known:
        fail(f"--arch {arch}: expected one of {', '.join(known)} "
             "(other attention-CNNs load a backbone checkpoint: export the backbone with "
             "--backbone-only)")
    fam = family(arch)
    if args.normalizer and fam != "attn":
        fail(f"--normalizer applies to {', '.join(ATTN_PRESETS)} only, not {arch}")
    if arch == "attn_vgg16":
        sd = attnmel_to_attnscope(sd)
        if "classifier.weight" not in sd and not args.backbone_only:
            fail(f"{args.source}: no AttnMel classifier (cls.weight); use --backbone-only")
    if fam == "vit":
        missing = [k for k in ("patch_embed.proj.weight", "cls_token", "pos_embed") if k not in sd]
        if missing:
            fail(f"{args.source}: not a timm ViT state_dict (missing {', '.join(missing)})")
    stored_classes = (num_classes_of(sd, arch) if fam != "attn" or "classifier.weight" in sd
                      else args.num_classes or 2)
    if args.num_classes and args.num_classes != stored_classes and not args.backbone_only:
        fail(f"--num-classes {args.num_classes} differs from the weights' {stored_classes}; "
             "use --backbone-only to leave the head out")
    num_classes = args.num_classes or stored_classes

    image_size = args.image_size or presets()[arch]["image_size"]
    tensors = convert(sd, arch, args.backbone_only, image_size if fam == "vit" else 0)
    # attnscope refuses a checkpoint with a NaN or an infinite weight (or one past float32's
    # range, which the conversion makes infinite): said here, not when it is first loaded.
    for name, array in sorted(tensors.items()):
        if not np.issubdtype(array.dtype, np.floating):
            continue
        with np.errstate(invalid="ignore"):
            good = np.isfinite(array) & (np.abs(array) <= np.finfo(np.float32).max)
        if not good.all():
            bad = int(np.size(array) - np.count_nonzero(good))
            fail(f"{args.source}: tensor {name} holds {bad} values that are NaN, infinite or "
                 "past float32's range: the weights are damaged")

    if library is None:
        library = "timm" if fam == "vit" else "torchvision"
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if library == "timm" else (IMAGENET_MEAN,
                                                                            IMAGENET_STD)
    if args.mean:
        mean = [float(x) for x in args.mean.split(",")]
    if args.std:
        std = [float(x) for x in args.std.split(",")]
    class_names = (args.class_names.split(",") if args.class_names
                   else [f"class_{i}" for i in range(num_classes)])
    if len(class_names) != num_classes:
        fail(f"--class-names has {len(class_names)} names for {num_classes} classes")
    # As attnscope reads them: each names one class (predictions.csv's columns, the report).
    for name in class_names:
        if not name.strip(" ") or any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f for c in name):
            fail(f"--class-names: {name!r} is blank or holds a control character")
    if len(set(class_names)) != len(class_names):
        twice = next(n for n in class_names if class_names.count(n) > 1)
        fail(f"--class-names: {twice!r} is named twice")

    model_config = {"arch": arch, "num_classes": num_classes, "image_size": image_size,
                    "in_channels": 3}
    if fam == "attn":
        model_config["normalizer"] = args.normalizer or "sigmoid"
    if fam == "vit" and shifted_patches(tensors):
        model_config["shifted_patches"] = True
    if fam == "vit" and locality_attention(tensors):
        model_config["locality_attention"] = True
    if fam == "vit" and conv_stem(tensors):
        model_config["conv_stem"] = True
    # The preprocessing config in the form attnscope's pipeline reads (preprocessing/pipeline.h):
    # a short-side resize + centre crop to the input size, and the weights' normalisation.
    preprocessing = {"steps": [{"op": "resize", "size": image_size}],
                     "normalize": {"mean": mean, "std": std}}
    provenance = {
        "source": source,
        "library": library,
        "torch_version": torch.__version__,
        "exported_by": "tools/python/export_weights.py",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    extra = {"backbone_only": bool(args.backbone_only)}
    write_checkpoint(args.output, tensors, model_config, preprocessing, class_names, provenance,
                     extra)
    print(f"wrote {args.output}: {arch}, {len(tensors)} tensors, {num_classes} classes"
          + (" (backbone only)" if args.backbone_only else ""))


if __name__ == "__main__":
    main()
