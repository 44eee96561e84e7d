#include "pipeline/text/seq2seq_translate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <libdeflate.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "pipeline/h5.h"

namespace attnscope::pipeline {

namespace text = datasets::text;

std::vector<Translation> translate(const Seq2SeqBundle& bundle,
                                   const std::vector<std::string>& sources,
                                   const models::text::DecodeOptions& options, int64_t batch_size,
                                   const std::function<bool()>& stop) {
  check(bundle.model != nullptr, "translate", "no model");
  check(batch_size >= 1, "translate", "batch size must be >= 1");
  auto& model = *bundle.model;
  model.eval();
  const auto max_length = static_cast<std::size_t>(model.options().max_length());
  std::vector<Translation> out(sources.size());
  std::vector<std::size_t> ready;  // sentences that tokenised
  std::vector<std::vector<int64_t>> ids(sources.size());
  for (std::size_t i = 0; i < sources.size(); ++i) {
    auto& t = out[i];
    if (sources[i].size() > kMaxSourceBytes) {
      t.source = excerpt(sources[i], 200);
      t.error =
          concat("input of ", sources[i].size(), " bytes, above the limit of ", kMaxSourceBytes);
      continue;
    }
    t.source = sources[i];
    try {
      t.source_tokens = text::tokenize(sources[i], bundle.tokenizer, "input");
    } catch (const Error& e) {
      t.error = e.message();
      continue;
    }
    if (t.source_tokens.empty()) {
      t.error = "empty input";
      continue;
    }
    if (t.source_tokens.size() > max_length) {
      t.source_tokens.resize(max_length);
      t.truncated = true;
    }
    ids[i] = bundle.source_vocab.encode(t.source_tokens);
    t.unknown =
        static_cast<std::size_t>(std::count(ids[i].begin(), ids[i].end(), text::Vocabulary::kUnk));
    ready.push_back(i);
  }
  // Similar lengths together: less padding, and a batch is as long as its longest member.
  std::vector<std::size_t> lengths;
  for (const auto i : ready)
    lengths.push_back(ids[i].size());
  const auto batches =
      text::length_batches(lengths, static_cast<std::size_t>(batch_size), 0, /*shuffle=*/false);
  bool stopped = false;
  for (const auto& batch : batches) {
    if (stopped || (stop && stop())) {
      stopped = true;
      for (const auto k : batch)
        out[ready[k]].error = "stopped";
      continue;
    }
    std::vector<std::vector<int64_t>> sequences;
    for (const auto k : batch)
      sequences.push_back(ids[ready[k]]);
    const auto [source, source_lengths] = text::pad_sequences(sequences);
    const auto hyps = models::text::decode(model, source, source_lengths, options);
    for (std::size_t j = 0; j < batch.size(); ++j) {
      auto& t = out[ready[batch[j]]];
      // A NaN or infinite score chose every token (argmax over NaN): weights past float32's
      // range gave the same maximum-length string for every input, exit 0 (classify refuses
      // such a model by its outputs too).
      if (!std::isfinite(hyps[j].log_prob)) {
        t.error =
            "the model's scores are not finite (NaN or inf): its weights are damaged or overflow";
        continue;
      }
      t.tokens = bundle.target_vocab.decode(hyps[j].tokens);
      t.text = text::detokenize(t.tokens, bundle.tokenizer);
      t.attention = hyps[j].attention;
    }
  }
  return out;
}

Seq2SeqEvaluation evaluate_seq2seq(const Seq2SeqBundle& bundle,
                                   const std::vector<text::TextPair>& pairs,
                                   const models::text::DecodeOptions& options, int64_t batch_size,
                                   const std::function<bool()>& stop, std::size_t chunk) {
  // `chunk` sentences at a time, scored and let go: every translation kept to the end (its
  // tokens as strings, its attention matrix) took tens of times the text's size.
  check(chunk >= 1, "evaluate", "chunk must be >= 1");
  Seq2SeqEvaluation eval;
  SequenceMetricsCounts counts;
  for (std::size_t begin = 0; begin < pairs.size(); begin += chunk) {
    const auto end = begin + std::min(pairs.size() - begin, chunk);
    std::vector<std::string> sources;
    for (std::size_t i = begin; i < end; ++i)
      sources.push_back(pairs[i].source);
    // Once `stop` says true, translate marks the rest "stopped" without decoding them.
    const auto translations = translate(bundle, sources, options, batch_size, stop);
    for (std::size_t i = begin; i < end; ++i) {
      const auto& t = translations[i - begin];
      eval.truncated += t.truncated ? 1 : 0;
      eval.failed += t.error.empty() ? 0 : 1;
      std::vector<std::string> reference;
      try {
        reference = text::tokenize(pairs[i].target, bundle.tokenizer, "reference");
      } catch (const Error&) {
        // an invalid reference matches nothing
      }
      counts.add(t.tokens, reference);
    }
  }
  eval.stopped = stop && stop();
  eval.metrics = counts.metrics();
  return eval;
}

bool is_alignments_file(const std::string& path) {
  return h5::has_format(path, "attnscope-alignments");
}

void write_alignments(const std::string& path, const std::vector<Translation>& translations,
                      const std::string& model_name) {
  h5::OutputFile file(path);
  h5::write_attribute(file.id(), "format", "attnscope-alignments", path);
  h5::write_attribute(file.id(), "model", model_name, path);
  h5::write_attribute(file.id(), "count", std::to_string(translations.size()), path);
  auto sentences = h5::require_group(file.id(), "sentences", path);
  for (std::size_t i = 0; i < translations.size(); ++i) {
    const auto& t = translations[i];
    char name[24];
    std::snprintf(name, sizeof(name), "%06zu", i);
    auto group = h5::require_group(sentences.get(), name, path);
    h5::write_attribute(group.get(), "source", t.source, path);
    if (!t.error.empty()) {
      h5::write_attribute(group.get(), "error", t.error, path);
      continue;
    }
    check(t.attention.defined(), path, "the model has no attention to write (fixed context)");
    h5::write_attribute(group.get(), "output", t.text, path);
    h5::write_attribute(group.get(), "source_tokens", nlohmann::json(t.source_tokens).dump(), path);
    h5::write_attribute(group.get(), "output_tokens", nlohmann::json(t.tokens).dump(), path);
    h5::write_attribute(group.get(), "truncated", t.truncated ? "true" : "false", path);
    h5::write_tensor(group.get(), "attention", t.attention.to(torch::kFloat).contiguous(), path);
  }
  sentences.reset();
  file.commit();
}

namespace {

// At most kMaxLabel characters, the rest said by "~": a word of 1 MB made a heatmap 7 GB wide.
std::string ascii_label(const std::string& token) {
  constexpr std::size_t kMaxLabel = 32;
  std::string out;
  for (const char c : token) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80 && (u & 0xC0) == 0x80) continue;  // UTF-8 continuation byte
    if (out.size() == kMaxLabel) {
      out.back() = '~';
      break;
    }
    out += u >= 0x80 ? '?' : (c == ' ' ? '_' : c);
  }
  return out;
}

// The tEXt chunk (PNG 1.2, section 11.3.4.3) that names the writer, right after IHDR: a
// keyword, NUL, the text.
const std::string kPngSoftware = std::string("Software") + '\0' + "attnscope seq2seq translate";
constexpr std::size_t kPngHeaderEnd = 8 + 4 + 4 + 13 + 4;  // signature, IHDR chunk

std::string png_chunk(const std::string& type, const std::string& data) {
  std::string chunk;
  const auto be32 = [&](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8)
      chunk += static_cast<char>((v >> shift) & 0xFF);
  };
  be32(static_cast<uint32_t>(data.size()));
  chunk += type + data;
  be32(libdeflate_crc32(0, chunk.data() + 4, chunk.size() - 4));  // over type and data
  return chunk;
}

}  // namespace

bool is_alignment_png(const std::string& path) {
  const auto chunk = png_chunk("tEXt", kPngSoftware);
  const auto head = file_head(path, kPngHeaderEnd + chunk.size());
  return head.size() == kPngHeaderEnd + chunk.size() && head.rfind("\x89PNG\r\n\x1a\n", 0) == 0 &&
         head.compare(kPngHeaderEnd, chunk.size(), chunk) == 0;
}

void write_alignment_png(const std::string& path, const Translation& translation) {
  check(translation.error.empty(), path, concat("sentence not translated: ", translation.error));
  check(translation.attention.defined(), path,
        "the model has no attention to draw (fixed context)");
  const auto weights = translation.attention.to(torch::kFloat).contiguous();  // (T, S)
  const int rows = static_cast<int>(weights.size(0)), cols = static_cast<int>(weights.size(1));
  // 22 px a cell: 2000 x 2000 tokens was a 6 GB image. A heatmap is read by eye: at most 512
  // tokens a side (11,264 px).
  check(rows <= 512 && cols <= 512, path, "alignment of ", rows, " x ", cols,
        " tokens is too large to draw (at most 512 a side); --alignments stores it as HDF5");
  constexpr int kCell = 22;
  constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
  constexpr double kScale = 0.45;
  constexpr int kMargin = 6;
  int label_w = 0;
  auto text_width = [&](const std::string& s) {
    int baseline = 0;
    return cv::getTextSize(s, kFont, kScale, 1, &baseline).width;
  };
  std::vector<std::string> row_labels, col_labels;
  for (const auto& t : translation.tokens)
    row_labels.push_back(ascii_label(t));
  for (const auto& t : translation.source_tokens)
    col_labels.push_back(ascii_label(t));
  for (const auto& s : row_labels)
    label_w = std::max(label_w, text_width(s));
  int label_h = 0;
  for (const auto& s : col_labels)
    label_h = std::max(label_h, text_width(s));
  const int left = label_w + 2 * kMargin, top = label_h + 2 * kMargin;
  cv::Mat image(top + rows * kCell + kMargin, left + cols * kCell + kMargin, CV_8UC3,
                cv::Scalar(255, 255, 255));
  // Heatmap cells.
  cv::Mat gray(rows, cols, CV_8UC1);
  const auto w = weights.accessor<float, 2>();
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      gray.at<uint8_t>(r, c) = cv::saturate_cast<uint8_t>(std::clamp(w[r][c], 0.0f, 1.0f) * 255);
  if (rows > 0 && cols > 0) {
    cv::Mat colored, big;
    cv::applyColorMap(gray, colored, cv::COLORMAP_VIRIDIS);
    cv::resize(colored, big, cv::Size(cols * kCell, rows * kCell), 0, 0, cv::INTER_NEAREST);
    big.copyTo(image(cv::Rect(left, top, big.cols, big.rows)));
  }
  // Output tokens down the left.
  for (int r = 0; r < rows; ++r)
    cv::putText(image, row_labels[static_cast<std::size_t>(r)],
                cv::Point(kMargin, top + r * kCell + kCell * 2 / 3), kFont, kScale,
                cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
  // Source tokens along the top, written horizontally into a strip then turned upright.
  if (label_h > 0 && cols > 0) {
    cv::Mat strip(cols * kCell, label_h + kMargin, CV_8UC3, cv::Scalar(255, 255, 255));
    for (int c = 0; c < cols; ++c)
      cv::putText(strip, col_labels[static_cast<std::size_t>(c)],
                  cv::Point(kMargin / 2, c * kCell + kCell * 2 / 3), kFont, kScale,
                  cv::Scalar(0, 0, 0), 1, cv::LINE_AA);
    cv::Mat upright;
    cv::rotate(strip, upright, cv::ROTATE_90_COUNTERCLOCKWISE);
    upright.copyTo(image(cv::Rect(left, kMargin, upright.cols, upright.rows)));
  }
  // Encoded in memory and written through AtomicFile: a full disk is an error naming the file,
  // never a truncated PNG.
  std::vector<uchar> png;
  check(cv::imencode(".png", image, png), path, "cannot encode the PNG");
  check(png.size() > kPngHeaderEnd && std::string(png.begin() + 12, png.begin() + 16) == "IHDR",
        path, "OpenCV's PNG encoder wrote no header");
  const auto software = png_chunk("tEXt", kPngSoftware);
  AtomicFile out(path);
  out.write(png.data(), kPngHeaderEnd);
  out.write(software.data(), software.size());
  out.write(png.data() + kPngHeaderEnd, png.size() - kPngHeaderEnd);
  out.commit();
}

}  // namespace attnscope::pipeline
