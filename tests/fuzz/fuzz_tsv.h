#pragma once
#include "datasets/text/pairs.h"
#include "fuzz/fuzz_targets.h"

namespace attnscope::fuzz {

/// The seq2seq TSV reader.
inline void tsv(const uint8_t* data, std::size_t size) {
  try {
    const auto pairs = datasets::text::parse_tsv_pairs(as_text(data, size), "fuzz.tsv");
    datasets::text::describe_skipped(pairs);
  } catch (const Error&) {
  }
}

}  // namespace attnscope::fuzz
