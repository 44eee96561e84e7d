#pragma once
// BatchNorm2d followed by ReLU as one operation, forward and backward.
//
// conv → BatchNorm → ReLU is the unit of every CNN trunk here. Run as two ATen operations,
// training streams the activation through memory 5 times forward (BatchNorm's statistics and
// normalisation, then ReLU in place) and 8 times backward (ReLU's backward writes a gradient
// that BatchNorm's backward reads twice), and keeps both BatchNorm's input and ReLU's output
// for the backward pass. Fused: 3 times forward, 5 times backward, and only the input kept
// (the ReLU mask is recomputed from it): y = max(0, (x − μ_c)·a_c + β_c) with a_c = γ_c/σ_c;
// the backward pass reduces Σg and Σg·x̂ over the positions where the pre-activation was
// positive, then writes ∂x = a_c·(g − Σg/M − x̂·Σg·x̂/M).
//
// The reductions run over fixed chunks of rows combined in order, so results depend neither on
// the thread count nor on scheduling. Running statistics and num_batches_tracked are updated as
// torch::nn::BatchNorm2d does. Inputs other than 4-d float32 channels-last CPU tensors, and
// BatchNorm modules without affine parameters or running statistics, go through the unfused
// ATen operations (same result up to rounding), as does everything when the environment sets
// ATTNSCOPE_FUSED_BN_RELU=0 (for benchmarks side by side).

#include <torch/torch.h>

namespace attnscope::models::vision {

/// relu(bn(x)) for a 4-d x; in training mode updates bn's running statistics.
torch::Tensor batch_norm_relu(const torch::Tensor& x, torch::nn::BatchNorm2dImpl& bn);

/// The unfused reference: bn->forward(x).relu().
torch::Tensor batch_norm_relu_unfused(const torch::Tensor& x, torch::nn::BatchNorm2dImpl& bn);

}  // namespace attnscope::models::vision
