#pragma once
// The ids of the special tokens every text vocabulary starts with, in one place: the
// vocabulary (datasets/text/tokenizer.h) numbers its tokens from them and the decoders
// (models/text/decoding.cpp) start from <bos> and stop at <eos>; models/ and datasets/ do not
// include each other, so both read them from here.

#include <cstdint>

namespace attnscope::special_tokens {

constexpr int64_t kPad = 0;  ///< "<pad>": fills sequences up to the batch's longest
constexpr int64_t kBos = 1;  ///< "<bos>": the first decoder input
constexpr int64_t kEos = 2;  ///< "<eos>": ends an output
constexpr int64_t kUnk = 3;  ///< "<unk>": a token outside the vocabulary

}  // namespace attnscope::special_tokens
