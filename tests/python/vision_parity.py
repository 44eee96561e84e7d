#!/usr/bin/python3
"""Reference logits for attnscope's image classifiers (used by tests/pipeline/image_parity_test).

For a torchvision architecture (resnet18, vgg16_bn, ...) builds the randomly initialised
torchvision model; for "vit" a ViT written here with timm's names whose attention is
torch.nn.functional.multi_head_attention_forward (torch.nn.MultiheadAttention's math); for
"vit_spt_lsa" the same ViT with Shifted Patch Tokenization and Locality Self-Attention written
here after the paper's code (Lee et al. 2021, github.com/aanna0701/SPT_LSA_ViT); for
"vit_conv_stem" the ViT with the convolutional stem of Xiao et al. 2021 (stride-2 3x3
torch.nn.Conv2d + BatchNorm2d + ReLU blocks of D/4, D/2, D channels and a 1x1 projection); for
"attnmel" AttnMel's AttnVGG (Yan et al. 2019) with its names, the trunk torchvision's vgg16_bn
and the grid attention written here from the paper's equations with torch.nn.functional. The BN
statistics are randomised so that eval-mode BN is not the identity. Writes into OUTDIR:
  model.pth   the state_dict
  model.h5    the attnscope checkpoint made by tools/python/export_weights.py
  ref.h5      input (B, 3, S, S), logits (B, C) and logits_bf16 (the same model under
              torch.autocast("cpu", dtype=torch.bfloat16), as float32); for vit also input_large / logits_large at a
              larger size (position embedding resized by the bicubic formula written here),
              attn_last (B, H, T, T), and grad/NAME and grad_bf16/NAME: every parameter's
              gradient of the cross-entropy of the logits with labels arange(B) % C, in
              float32 and with the forward under autocast
For attnmel: model_sigmoid.h5 / model_softmax.h5 (the same weights, one per normaliser) and in
ref.h5 input (size S) and input_small (size S - 64), and per normaliser N and input X
logits_N_X (B, C), stage3_N_X, stage4_N_X (B, h, w): the pool-3 and pool-4 maps.
"""

import argparse
import math
import os
import sys

import h5py
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "python"))
import export_weights  # noqa: E402


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        t = x.transpose(0, 1)  # (T, B, D)
        out, weights = F.multi_head_attention_forward(
            t, t, t, x.shape[-1], self.heads, self.qkv.weight, self.qkv.bias, None, None, False,
            0.0, self.proj.weight, self.proj.bias, training=False, need_weights=True,
            average_attn_weights=False)
        return out.transpose(0, 1), weights


class LocalityAttention(nn.Module):
    """LSA as the paper's code computes it: q·k times a learned scale per head, the diagonal
    masked, softmax."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.full((heads,), (dim // heads) ** -0.5))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale.view(1, -1, 1, 1)
        dots = dots.masked_fill(torch.eye(t, dtype=torch.bool), float("-inf"))
        weights = dots.softmax(dim=-1)
        out = torch.einsum("bhij,bhjd->bhid", weights, v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out), weights


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, lsa=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LocalityAttention(dim, heads) if lsa else Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x):
        a, w = self.attn(self.norm1(x))
        x = x + a
        return x + self.mlp(self.norm2(x)), w


class PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x)


class ShiftedPatchEmbed(nn.Module):
    """SPT after the paper's code: the image padded by patch // 2 and cropped four ways
    (x_lu, x_ru, x_lb, x_rb), stacked after the image; every patch's values (here unfolded in
    (channel, row, column) order, attnscope's layout of `norm` and `proj`) layer-normalised and
    projected linearly."""

    def __init__(self, dim, patch, channels=3):
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm((5 * channels, patch, patch))
        self.proj = nn.Conv2d(5 * channels, dim, patch, stride=patch)

    def forward(self, x):
        s, p = self.patch // 2, self.patch
        xp = F.pad(x, (s, s, s, s))
        x_lu, x_ru = xp[:, :, :-2 * s, :-2 * s], xp[:, :, :-2 * s, 2 * s:]
        x_lb, x_rb = xp[:, :, 2 * s:, :-2 * s], xp[:, :, 2 * s:, 2 * s:]
        stacked = torch.cat([x, x_lu, x_ru, x_lb, x_rb], dim=1)
        cols = F.unfold(stacked, p, stride=p).transpose(1, 2)  # (B, L, 5C·p·p)
        cols = F.layer_norm(cols, (cols.shape[-1],), self.norm.weight.flatten(),
                            self.norm.bias.flatten(), self.norm.eps)
        tokens = F.linear(cols, self.proj.weight.flatten(1), self.proj.bias)  # (B, L, D)
        b, _, h, w = x.shape
        return tokens.transpose(1, 2).reshape(b, -1, h // p, w // p)


class ConvStemEmbed(nn.Module):
    """Xiao et al. 2021's stem for ViTc: log2(patch) blocks of a 3x3 convolution with stride 2
    (no bias), BatchNorm and ReLU, the widths doubling up to D, then a 1x1 convolution."""

    def __init__(self, dim, patch, channels=3):
        super().__init__()
        blocks = int(math.log2(patch))
        layers, width_in = [], channels
        for j in range(blocks):
            width = dim // 2 ** (blocks - 1 - j)
            layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            width_in = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        return self.proj(self.stem(x))


class ViT(nn.Module):
    """timm's VisionTransformer names: patch_embed.proj, cls_token, pos_embed, blocks, norm, head."""

    def __init__(self, dim, depth, heads, patch, image_size, num_classes, spt=False, lsa=False,
                 conv_stem=False):
        super().__init__()
        self.patch = patch
        self.lsa = lsa
        self.patch_embed = (ShiftedPatchEmbed(dim, patch) if spt
                            else ConvStemEmbed(dim, patch) if conv_stem else PatchEmbed(dim, patch))
        grid = image_size // patch
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, lsa) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        gh, gw = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + resize_pos_embed_from_formula(self.pos_embed, gh)
        weights = None
        for block in self.blocks:
            x, weights = block(x)
        x = self.norm(x)
        return self.head(x[:, 0]), weights


def cubic_weights(t, a=-0.75):
    """Keys' cubic convolution weights (a = -0.75, PyTorch's bicubic) of the taps at offsets
    -1, 0, 1, 2 from floor(x), for the fraction t = x - floor(x)."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1
    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_resize_rows(grid, size):
    """Resamples axis 0 of grid (n, ...) to size rows: align_corners=False maps output i to the
    source coordinate x = (i + 0.5) * n / size - 0.5; taps beyond the edge take the edge row."""
    n = grid.shape[0]
    out = []
    for i in range(size):
        x = (i + 0.5) * n / size - 0.5
        x0 = math.floor(x)
        row = torch.zeros_like(grid[0])
        for k, w in enumerate(cubic_weights(x - x0)):
            row = row + w * grid[min(max(x0 - 1 + k, 0), n - 1)]
        out.append(row)
    return torch.stack(out)


def resize_pos_embed_from_formula(pos, grid):
    """The position embedding (1, 1 + g*g, D) resized to grid x grid from the formula of bicubic
    interpolation with align_corners=False (separable: rows, then columns), in float64: the
    reference the C++ ViT's interpolation is held to, written apart from torch's interpolate.
    (timm's resample_abs_pos_embed calls that interpolate with antialias=True by default, which
    for upsampling uses a = -0.5 and renormalised edge weights; the older timm resize_pos_embed
    and attnscope use antialias=False, this formula.)"""
    n = pos.shape[1] - 1
    old = int(round(n ** 0.5))
    patches = pos[0, 1:].double().reshape(old, old, -1)               # (g, g, D)
    patches = bicubic_resize_rows(patches, grid)                      # (grid, g, D)
    patches = bicubic_resize_rows(patches.transpose(0, 1), grid)      # (grid_w, grid_h, D)
    patches = patches.transpose(0, 1).reshape(1, grid * grid, -1)     # (1, grid*grid, D)
    return torch.cat([pos[:, :1], patches.to(pos.dtype)], dim=1)


class GridAttention(nn.Module):
    """AttnMel's attention gate (after Oktay et al. 2018) from the equations:
    c = phi(ReLU(W_l l + up(W_g g))), up = bilinear (align_corners False) by up_factor;
    softmax: a = softmax of c over the grid, output sum of a * l; sigmoid: a = sigmoid(c),
    output the mean of a * l over the grid."""

    def __init__(self, c_l, c_g, attn, up_factor):
        super().__init__()
        self.up_factor = up_factor
        self.W_l = nn.Conv2d(c_l, attn, 1, bias=False)
        self.W_g = nn.Conv2d(c_g, attn, 1, bias=False)
        self.phi = nn.Conv2d(attn, 1, 1, bias=True)

    def forward(self, l, g, softmax):
        n, ch, h, w = l.shape
        up = F.interpolate(F.conv2d(g, self.W_g.weight), scale_factor=self.up_factor,
                           mode="bilinear", align_corners=False)
        c = F.conv2d(F.relu(F.conv2d(l, self.W_l.weight) + up), self.phi.weight, self.phi.bias)
        if softmax:
            a = F.softmax(c.view(n, -1), dim=1).view(n, 1, h, w)
            out = (a * l).sum(dim=(2, 3))
        else:
            a = torch.sigmoid(c)
            out = (a * l).mean(dim=(2, 3))
        return a[:, 0], out


class AttnMel(nn.Module):
    """AttnMel's AttnVGG names: conv_block1..5 (vgg16_bn's features without the max-pools),
    attn1 (pool-3), attn2 (pool-4), cls on concat(GAP(pool-5), attended pool-3, pool-4)."""

    def __init__(self, num_classes):
        super().__init__()
        import torchvision
        features = list(torchvision.models.vgg16_bn().features.children())
        for k, (a, b) in enumerate([(0, 6), (7, 13), (14, 23), (24, 33), (34, 43)], 1):
            setattr(self, f"conv_block{k}", nn.Sequential(*features[a:b]))
        self.attn1 = GridAttention(256, 512, 256, 4)
        self.attn2 = GridAttention(512, 512, 256, 2)
        self.cls = nn.Linear(512 + 256 + 512, num_classes)

    def forward(self, x, softmax):
        pools = []
        for k in range(1, 6):
            x = F.max_pool2d(getattr(self, f"conv_block{k}")(x), 2, 2)
            pools.append(x)
        pool3, pool4, pool5 = pools[2:]
        a1, g1 = self.attn1(pool3, pool5, softmax)
        a2, g2 = self.attn2(pool4, pool5, softmax)
        g = pool5.mean(dim=(2, 3))
        return self.cls(torch.cat([g, g1, g2], dim=1)), a1, a2


def attnmel_reference(args, outdir):
    model = AttnMel(args.num_classes)
    randomise_norms(model)
    with torch.no_grad():
        for block in (model.attn1, model.attn2):
            for conv in (block.W_l, block.W_g, block.phi):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            block.phi.bias.fill_(0.3)  # AttnMel initialises it to 0; sigmoid weights depend on it
        model.cls.weight.normal_(0.0, 0.01)
        model.cls.bias.uniform_(-0.1, 0.1)
    model.eval()
    pth = os.path.join(outdir, "model.pth")
    torch.save(model.state_dict(), pth)
    ref = {"input": torch.randn(args.batch, 3, args.size, args.size),
           "input_small": torch.randn(args.batch, 3, args.size - 64, args.size - 64)}
    for norm in ("sigmoid", "softmax"):
        export_weights.main([pth, os.path.join(outdir, f"model_{norm}.h5"),
                             "--normalizer", norm, "--image-size", str(args.size)])
        for key in ("input", "input_small"):
            with torch.no_grad():
                logits, a1, a2 = model(ref[key], norm == "softmax")
            ref[f"logits_{norm}_{key}"], ref[f"stage3_{norm}_{key}"] = logits, a1
            ref[f"stage4_{norm}_{key}"] = a2
    return ref


def randomise_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("arch")
    parser.add_argument("outdir")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    pth = os.path.join(args.outdir, "model.pth")
    ref = {}
    if args.arch == "attnmel":
        ref = attnmel_reference(args, args.outdir)
        with h5py.File(os.path.join(args.outdir, "ref.h5"), "w") as f:
            for name, tensor in ref.items():
                f.create_dataset(name, data=tensor.contiguous().numpy())
        return
    if args.arch in ("vit", "vit_spt_lsa", "vit_conv_stem"):
        dim, depth, heads, patch = export_weights.vit_presets()["vit_mini_patch8"]
        small_data = args.arch == "vit_spt_lsa"
        model = ViT(dim, depth, heads, patch, args.size, args.num_classes, spt=small_data,
                    lsa=small_data, conv_stem=args.arch == "vit_conv_stem")
        randomise_norms(model)
        with torch.no_grad():  # scales away from their initial value, one per head
            for block in model.blocks:
                if small_data:
                    block.attn.scale.uniform_(0.1, 0.5)
        model.eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        large = torch.randn(args.batch, 3, args.size + 2 * patch, args.size + 2 * patch)
        with torch.no_grad():
            ref["logits"], ref["attn_last"] = model(x)
            ref["logits_large"], _ = model(large)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref["logits_bf16"] = model(x)[0].float()
        # A training step's gradients, float32 and under autocast (the loss in float32, as
        # attnscope train computes it).
        y = torch.arange(args.batch) % args.num_classes
        for key, bf16 in (("grad", False), ("grad_bf16", True)):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)[0]
            F.cross_entropy(logits.float(), y).backward()
            for name, p in model.named_parameters():
                ref[key + "/" + name] = p.grad.detach().float().clone()
        model.zero_grad(set_to_none=True)
        ref["input"], ref["input_large"] = x, large
        arch_args = ["--arch", "vit_mini_patch8", "--image-size", str(args.size)]
    else:
        import torchvision
        model = getattr(torchvision.models, args.arch)(num_classes=args.num_classes)
        randomise_norms(model)
        model.eval()
        x = torch.randn(args.batch, 3, args.size, args.size)
        with torch.no_grad():
            ref["logits"] = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref["logits_bf16"] = model(x).float()
        ref["input"] = x
        arch_args = []
    torch.save(model.state_dict(), pth)
    export_weights.main([pth, os.path.join(args.outdir, "model.h5")] + arch_args)
    with h5py.File(os.path.join(args.outdir, "ref.h5"), "w") as f:
        for name, tensor in ref.items():
            f.create_dataset(name, data=tensor.contiguous().numpy())


if __name__ == "__main__":
    main()
