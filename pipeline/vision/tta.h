#pragma once
// Test-time augmentation over the 8 symmetries of the square (the dihedral group D4): run a
// model on each transformed batch, map every spatial output back with the inverse transform,
// and average. Used by `attnscope evaluate --tta` and by classify.
//
// Transform k (0..7): a horizontal flip (of the width axis) when k >= 4, then k % 4 quarter
// turns counter-clockwise, exactly torch.rot90(x, k % 4, dims=(-2, -1)) applied to
// (torch.flip(x, [-1]) if k >= 4 else x). Transform 0 is the identity.
//
// Shape: every function works on the last two dimensions (H, W) of a tensor of any rank ≥ 2:
//   images (B, C, H, W), maps (B, h, w) or (B, 1, h, w). An odd number of quarter turns swaps
//   H and W.

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/types.h>

namespace attnscope::pipeline {

constexpr int64_t kDihedralCount = 8;

/// "identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180",
/// "flip_rot270". Throws Error for an index outside 0..7.
std::string dihedral_name(int64_t index);

/// Transform `index` of x's last two dimensions.
torch::Tensor dihedral_transform(const torch::Tensor& x, int64_t index);

/// The inverse: dihedral_inverse(dihedral_transform(x, k), k) == x for every k. Maps a map
/// computed on transformed input back onto the original image's orientation.
torch::Tensor dihedral_inverse(const torch::Tensor& y, int64_t index);

/// Mean of fn over the 8 transforms of images: (1/8) Σ_k fn(transform_k(images)). For
/// outputs without spatial axes (probabilities (B, C)): nothing to map back.
torch::Tensor tta_mean(const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                       const torch::Tensor& images);

/// Mean of maps[k] mapped back by inverse k: maps.size() must be 8, maps[k] the output on
/// transform k ((B, h, w) or (B, 1, h, w)). Throws Error on a wrong count or mismatched shapes.
torch::Tensor mean_of_inverted_maps(const std::vector<torch::Tensor>& maps);

}  // namespace attnscope::pipeline
