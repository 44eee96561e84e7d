#pragma once
// What every CNN in models/vision shares (ResNet, VGG, the attention-CNNs): torchvision's
// initialisation and the channels-last weight layout. Each model's reset() calls both.

#include <torch/torch.h>

namespace attnscope::models::vision {

/// torchvision's initialisation: Kaiming-normal (fan_out, ReLU) convolutions, BN weight 1 and
/// bias 0. Applied to every Conv2d and BatchNorm2d below module.
void init_cnn_weights(torch::nn::Module& module);

/// Stores every 4-D parameter (the convolution weights) below module in channels-last order.
/// With channels-last inputs (the trunks convert theirs) LibTorch's oneDNN convolutions run
/// about 1.4× faster on CPU than in the default NCHW order; copy_ (checkpoint loading) and
/// clone keep the order, and checkpoints store logical (NCHW) tensors either way.
void use_channels_last(torch::nn::Module& module);

}  // namespace attnscope::models::vision
