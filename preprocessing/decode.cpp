#include "preprocessing/decode.h"

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <streambuf>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"

namespace attnscope::preprocessing {
namespace {

// OpenCV 4.6's imdecode prints a decoder's exception to std::cerr itself ("imdecode_(''): can't
// read data: OpenCV(4.6.0) ./modules/...", with "> " lines) before it returns an empty image,
// and its TIFF reader logs a "[ WARN:0@0.2] ..." line there too: on a batch's terminal these
// came before attnscope's own line naming the file. While a thread decodes through OpenCV,
// what that thread writes to std::cerr is kept for it (the reason joins its error; after a
// successful decode, OpenCV's warnings are dropped); other threads' writes pass through as
// before. Installed before main(), while no thread runs.
class CerrCapture : public std::streambuf {
 public:
  explicit CerrCapture(std::streambuf* next) : next_(next) {}
  static thread_local std::string* target;

 protected:
  int_type overflow(int_type c) override {
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    if (target) {
      if (target->size() < (std::size_t{1} << 16)) target->push_back(traits_type::to_char_type(c));
      return c;
    }
    return next_ ? next_->sputc(traits_type::to_char_type(c)) : traits_type::eof();
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    if (target) {
      if (target->size() < (std::size_t{1} << 16)) target->append(s, static_cast<std::size_t>(n));
      return n;
    }
    return next_ ? next_->sputn(s, n) : 0;
  }
  int sync() override { return target || !next_ ? 0 : next_->pubsync(); }

 private:
  std::streambuf* next_;
};

thread_local std::string* CerrCapture::target = nullptr;

// Never destroyed: std::cerr outlives every static, and a line written at exit (a library's
// destructor, a thread still running) went to a destroyed buffer and was lost.
const bool kCerrCaptured = [] {
  std::cerr.rdbuf(new CerrCapture(std::cerr.rdbuf()));
  return true;
}();

// Keeps what this thread writes to std::cerr in `out` while it lives.
struct CerrKept {
  explicit CerrKept(std::string* out) : previous(CerrCapture::target) { CerrCapture::target = out; }
  ~CerrKept() { CerrCapture::target = previous; }
  CerrKept(const CerrKept&) = delete;
  CerrKept& operator=(const CerrKept&) = delete;
  std::string* previous;
};

// The reason in what OpenCV printed: "...error: (-2:Unspecified error) REASON in function
// '...'", or the first "> " line of a failed CV_Check ("> Buffer is too small (...), where").
std::string opencv_reason(const std::string& said) {
  auto line_at = [&](std::size_t at) { return said.substr(at, said.find('\n', at) - at); };
  std::string reason;
  if (const auto e = said.find("error: ("); e != std::string::npos) {
    if (const auto close = said.find(") ", e); close != std::string::npos) {
      reason = line_at(close + 2);
      if (reason.rfind("in function '", 0) == 0) reason.clear();
      reason = reason.substr(0, reason.rfind(" in function '"));
    }
  }
  if (reason.empty())
    if (const auto gt = said.find("\n> "); gt != std::string::npos) {
      reason = line_at(gt + 3);
      if (reason.size() > 7 && reason.compare(reason.size() - 7, 7, ", where") == 0)
        reason.resize(reason.size() - 7);
    }
  if (reason.empty())
    if (const auto w = said.find("OpenCV TIFF"); w != std::string::npos) reason = line_at(w);
  if (reason.size() > 200) reason = reason.substr(0, 200) + "...";
  for (auto& c : reason)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return reason;
}

namespace fs = std::filesystem;

// Bounds-checked big/little-endian reads over the encoded bytes.
class Reader {
 public:
  Reader(const std::vector<uint8_t>& bytes, const std::string& name) : b_(bytes), name_(name) {}
  std::size_t size() const { return b_.size(); }
  bool has(std::size_t pos, std::size_t n) const {
    return pos <= b_.size() && n <= b_.size() - pos;
  }
  void need(std::size_t pos, std::size_t n, const char* what) const {
    check(has(pos, n), name_, "truncated file: the ", what, " is cut short");
  }
  uint32_t be(std::size_t pos, int n) const {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i)
      v = (v << 8) | b_[pos + i];
    return v;
  }
  uint32_t le(std::size_t pos, int n) const {
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; --i)
      v = (v << 8) | b_[pos + i];
    return v;
  }
  uint8_t at(std::size_t pos) const { return b_[pos]; }
  bool starts_with(std::size_t pos, const char* magic, std::size_t n) const {
    return has(pos, n) && std::memcmp(b_.data() + pos, magic, n) == 0;
  }

 private:
  const std::vector<uint8_t>& b_;
  const std::string& name_;
};

// TIFF structure (also the payload of a JPEG Exif segment): reads tags of IFD0.
struct TiffTags {
  int width = 0, height = 0, orientation = 1;
};

TiffTags read_tiff_ifd0(const Reader& r, std::size_t base, const char* what) {
  TiffTags tags;
  r.need(base, 8, what);
  const bool little = r.starts_with(base, "II", 2);
  if (!little && !r.starts_with(base, "MM", 2))
    throw Error("", concat("corrupt ", what, ": bad byte-order mark"));
  auto u16 = [&](std::size_t p) { return little ? r.le(p, 2) : r.be(p, 2); };
  auto u32 = [&](std::size_t p) { return little ? r.le(p, 4) : r.be(p, 4); };
  const std::size_t ifd = base + u32(base + 4);
  r.need(ifd, 2, what);
  const uint32_t count = u16(ifd);
  r.need(ifd + 2, std::size_t{12} * count, what);
  for (uint32_t i = 0; i < count; ++i) {
    const std::size_t e = ifd + 2 + 12 * std::size_t{i};
    const uint32_t tag = u16(e), type = u16(e + 2);
    const uint32_t value = type == 3 ? u16(e + 8) : u32(e + 8);  // SHORT or LONG
    // The first of repeated size tags, as libtiff takes it (the last let a 20000^2 image pass
    // the pixel limit under a small second tag).
    if (tag == 256 && tags.width == 0) tags.width = static_cast<int>(value);
    if (tag == 257 && tags.height == 0) tags.height = static_cast<int>(value);
    if (tag == 274 && value >= 1 && value <= 8) tags.orientation = static_cast<int>(value);
  }
  return tags;
}

bool is_tiff(const Reader& r, std::size_t pos) {
  return r.starts_with(pos, "II*\0", 4) || r.starts_with(pos, "MM\0*", 4);
}

ImageInfo probe_jpeg(const Reader& r, const std::string& name) {
  ImageInfo info{"jpeg"};
  std::size_t pos = 2;
  for (;;) {
    r.need(pos, 2, "JPEG header");
    check(r.at(pos) == 0xFF, name, "corrupt JPEG: expected a marker at byte ", pos);
    const uint8_t marker = r.at(pos + 1);
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    check(marker != 0xD9 && marker != 0xDA, name, "corrupt JPEG: no frame header before the scan");
    r.need(pos, 4, "JPEG header");
    const uint32_t len = r.be(pos + 2, 2);
    check(len >= 2, name, "corrupt JPEG: bad segment length at byte ", pos);
    r.need(pos + 2, len, "JPEG header");
    if (marker == 0xE1 && len >= 16 && r.starts_with(pos + 4, "Exif\0\0", 6) &&
        is_tiff(r, pos + 10)) {
      try {  // a damaged EXIF block leaves the image readable, only unrotated
        info.orientation = read_tiff_ifd0(r, pos + 10, "EXIF block").orientation;
      } catch (const Error&) {
        info.orientation = 1;
      }
    }
    const bool sof =
        marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof) {
      check(len >= 7, name, "corrupt JPEG: frame header too short");
      info.height = static_cast<int>(r.be(pos + 5, 2));
      info.width = static_cast<int>(r.be(pos + 7, 2));
      return info;
    }
    pos += 2 + len;
  }
}

ImageInfo probe_png(const Reader& r, const std::string& name) {
  r.need(8, 25, "PNG header");
  check(r.starts_with(12, "IHDR", 4), name, "corrupt PNG: the first chunk is not IHDR");
  return {"png", static_cast<int>(r.be(16, 4)), static_cast<int>(r.be(20, 4)), 1};
}

ImageInfo probe_bmp(const Reader& r) {
  r.need(14, 12, "BMP header");
  const uint32_t header_size = r.le(14, 4);
  if (header_size == 12)  // OS/2 BITMAPCOREHEADER
    return {"bmp", static_cast<int>(r.le(18, 2)), static_cast<int>(r.le(20, 2)), 1};
  // Signed (a negative height is a top-down bitmap); INT32_MIN has no positive int (found by
  // fuzzing under UBSan): it becomes 0, which probe_image refuses as a corrupt size.
  const auto side = [&](std::size_t pos) {
    const auto v = static_cast<int32_t>(r.le(pos, 4));
    return v == std::numeric_limits<int32_t>::min() ? 0 : std::abs(v);
  };
  return {"bmp", side(18), side(22), 1};
}

ImageInfo probe_webp(const Reader& r, const std::string& name) {
  r.need(12, 18, "WebP header");
  if (r.starts_with(12, "VP8X", 4))
    return {"webp", static_cast<int>(r.le(24, 3)) + 1, static_cast<int>(r.le(27, 3)) + 1, 1};
  if (r.starts_with(12, "VP8L", 4)) {
    const uint32_t bits = r.le(21, 4);
    return {"webp", static_cast<int>(bits & 0x3FFF) + 1,
            static_cast<int>((bits >> 14) & 0x3FFF) + 1, 1};
  }
  if (r.starts_with(12, "VP8 ", 4)) {
    r.need(20, 10, "WebP header");
    check(r.at(23) == 0x9D && r.at(24) == 0x01 && r.at(25) == 0x2A, name,
          "corrupt WebP: bad VP8 start code");
    return {"webp", static_cast<int>(r.le(26, 2) & 0x3FFF), static_cast<int>(r.le(28, 2) & 0x3FFF),
            1};
  }
  throw Error(name, "corrupt WebP: unknown chunk after the RIFF header");
}

// libjpeg decodes a truncated JPEG without complaint (it pads with grey), so look for the
// end-of-image marker after the first scan.
bool jpeg_has_end(const std::vector<uint8_t>& b) {
  std::size_t pos = 2;
  while (pos + 4 <= b.size()) {  // walk the segments up to the first scan
    if (b[pos] != 0xFF) return false;
    const uint8_t marker = b[pos + 1];
    if (marker == 0xFF) {
      ++pos;
      continue;
    }
    if (marker == 0xDA) break;
    pos += 2 + ((b[pos + 2] << 8) | b[pos + 3]);
  }
  for (std::size_t i = b.size(); i-- > pos + 1;)
    if (b[i - 1] == 0xFF && b[i] == 0xD9) return true;
  return false;
}

// libjpeg reports corrupt entropy-coded data ("Corrupt JPEG data: 3 extraneous bytes before
// marker 0xd9", bad Huffman codes) only as a warning and decodes garbage; OpenCV prints the
// warning to stderr and accepts the image. docs/preprocessing.md promises an error for a
// corrupt stream, so libjpeg's warnings are collected (jpeg_decode_rgb).
struct JpegErrors {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  int warnings;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fatal(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  (*info->err->format_message)(info, errors->message);
  std::longjmp(errors->jump, 1);
}

// Progressive JPEGs have about ten scans; a crafted one repeats a scan thousands of times and
// each costs a pass over the image (20,000 copies in 2 MB ran for minutes). libjpeg-turbo's
// djpeg -maxscans guards the same way.
constexpr int kMaxJpegScans = 100;

void jpeg_scan_limit(j_common_ptr info) {
  const auto* d = reinterpret_cast<j_decompress_ptr>(info);
  if (d->input_scan_number <= kMaxJpegScans) return;
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  std::snprintf(errors->message, JMSG_LENGTH_MAX, "more than %d scans (a crafted progressive file)",
                kMaxJpegScans);
  std::longjmp(errors->jump, 1);
}

void jpeg_message(j_common_ptr info, int level) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  if (level < 0 && errors->warnings++ == 0) (*info->err->format_message)(info, errors->message);
}

// Decodes a JPEG to RGB in one pass with libjpeg, warnings collected as above, into *out (the
// caller's, so that a longjmp skips no destructor). The pixels are OpenCV's: its reader calls
// the same libjpeg with the same defaults (islow IDCT, fancy upsampling), in BGR order.
// CMYK and YCCK, which libjpeg does not convert to RGB, are left to OpenCV: their scan is only
// entropy-decoded here (coefficients, no IDCT) to collect the warnings.
// Returns 1 when decoded, 0 for a clean stream left to OpenCV, -1 for a corrupt stream
// (libjpeg's first warning or error in `message`).
int jpeg_decode_rgb(const std::vector<uint8_t>& bytes, const ImageInfo& probed, int reduce_to,
                    cv::Mat* out, char* message) {
  jpeg_decompress_struct info;
  JpegErrors errors;
  info.err = jpeg_std_error(&errors.manager);
  errors.manager.error_exit = jpeg_fatal;
  errors.manager.emit_message = jpeg_message;
  errors.warnings = 0;
  errors.message[0] = '\0';
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&info);
    std::memcpy(message, errors.message, JMSG_LENGTH_MAX);
    return -1;
  }
  jpeg_create_decompress(&info);
  jpeg_progress_mgr progress{};
  progress.progress_monitor = jpeg_scan_limit;
  info.progress = &progress;
  jpeg_mem_src(&info, const_cast<unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&info, TRUE);
  if (info.jpeg_color_space != JCS_GRAYSCALE && info.jpeg_color_space != JCS_YCbCr &&
      info.jpeg_color_space != JCS_RGB) {
    jpeg_read_coefficients(&info);
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    std::memcpy(message, errors.message, JMSG_LENGTH_MAX);
    return errors.warnings == 0 ? 0 : -1;
  }
  info.out_color_space = JCS_RGB;
  // DCT-domain reduction: the largest of 8, 4, 2 that keeps the short side >= reduce_to.
  const int denom = jpeg_reduction(probed.width, probed.height, reduce_to);
  info.scale_num = 1;
  info.scale_denom = static_cast<unsigned int>(denom);
  jpeg_start_decompress(&info);
  // The size guard read the frame header itself (probe_jpeg): libjpeg must agree with it
  // (libjpeg rounds a reduced size up).
  const int expect_w = (probed.width + denom - 1) / denom;
  const int expect_h = (probed.height + denom - 1) / denom;
  if (info.output_width != static_cast<JDIMENSION>(expect_w) ||
      info.output_height != static_cast<JDIMENSION>(expect_h)) {
    std::snprintf(message, JMSG_LENGTH_MAX, "frame size %ux%u, not the %dx%d of the header",
                  info.output_width, info.output_height, expect_w, expect_h);
    jpeg_destroy_decompress(&info);
    return -1;
  }
  try {
    out->create(static_cast<int>(info.output_height), static_cast<int>(info.output_width),
                CV_8UC3);
  } catch (...) {  // out of memory: no longjmp is pending, libjpeg's state is released here
    jpeg_destroy_decompress(&info);
    throw;
  }
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out->ptr(static_cast<int>(info.output_scanline));
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  std::memcpy(message, errors.message, JMSG_LENGTH_MAX);
  return errors.warnings == 0 ? 1 : -1;
}

// Walks a PNG's chunks (length, type, data, CRC-32 of type + data) up to IEND: "" when
// every chunk is whole and its CRC matches, else the problem. libpng would find a CRC error
// too, but only after printing "libpng error: ..." to stderr, and OpenCV then reports no
// reason at all; checking first keeps the one line attnscope prints the only line.
std::string png_chunk_problem(const std::vector<uint8_t>& b) {
  const auto be32 = [&](std::size_t pos) {
    return uint32_t{b[pos]} << 24 | uint32_t{b[pos + 1]} << 16 | uint32_t{b[pos + 2]} << 8 |
           uint32_t{b[pos + 3]};
  };
  std::size_t pos = 8;
  while (true) {
    if (b.size() - pos < 12)
      return pos == b.size() ? std::string("truncated or corrupt PNG: no IEND chunk")
                             : concat("truncated PNG: cut inside the chunk at byte ", pos);
    const uint32_t length = be32(pos);
    const std::string type(reinterpret_cast<const char*>(b.data()) + pos + 4, 4);
    if (!std::all_of(type.begin(), type.end(),
                     [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }))
      return concat("corrupt PNG: no valid chunk type at byte ", pos);
    if (length > 0x7fffffffu) return concat("corrupt PNG: chunk ", type, " length ", length);
    if (b.size() - pos - 12 < length)
      return concat("truncated PNG: chunk ", type, " at byte ", pos, " holds ", b.size() - pos - 12,
                    " of its ", length, " bytes");
    const uint32_t crc = static_cast<uint32_t>(
        crc32(crc32(0L, Z_NULL, 0), b.data() + pos + 4, static_cast<uInt>(length) + 4));
    if (crc != be32(pos + 8 + length))
      return concat("corrupt PNG: CRC mismatch in chunk ", type, " at byte ", pos);
    if (type == "IEND") return "";  // trailing bytes after IEND are legal
    pos += 12 + std::size_t{length};
  }
}

// PNG decoding with libpng directly, not through OpenCV: OpenCV's reader keeps libpng's
// default handlers, which print "libpng error: ..." and every warning (the common
// "iCCP: known incorrect sRGB profile" of real-world files) to stderr. Here an error becomes
// the one line attnscope prints and warnings (all benign: libpng goes on) are dropped.
// Pixels are those OpenCV gives for IMREAD_UNCHANGED followed by decode_image_bytes's
// conversions: palette expanded, 1/2/4-bit grey scaled to 8 bits, grey replicated, alpha and
// tRNS ignored (not composited), 16-bit samples rounded to v / 257; no gamma or ICC
// transform (OpenCV applies none either). Tested against cv::imdecode on every colour type,
// bit depth and interlacing.
struct PngSource {
  const uint8_t* data;
  std::size_t size;
  std::size_t pos;
  char message[256];
};

void png_on_error(png_structp png, png_const_charp text) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof src->message, "%s", text ? text : "unknown error");
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "unexpected end of file");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

// Fills `out` and returns true, or false with libpng's error in src.message. No C++ object
// with a destructor lives in this frame, and nothing in it changes after setjmp that is read
// after the longjmp: libpng leaves it by longjmp.
bool decode_png_into(PngSource& src, cv::Mat& out, std::vector<png_bytep>& rows) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error,
                                           png_on_warning);
  std::snprintf(src.message, sizeof src.message, "cannot start libpng");
  if (!png) return false;
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, &src, png_read_memory);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info);
  const png_uint_32 height = png_get_image_height(png, info);
  const int depth = png_get_bit_depth(png, info);
  const int colour = png_get_color_type(png, info);
  if (colour == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((colour & PNG_COLOR_MASK_COLOR) == 0) {
    if (depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    png_set_gray_to_rgb(png);
  }
  png_set_strip_alpha(png);
  if (depth == 16) png_set_swap(png);  // host order (x86-64: little-endian)
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int sample = depth == 16 ? CV_16UC3 : CV_8UC3;
  if (png_get_rowbytes(png, info) != std::size_t{width} * 3 * (depth == 16 ? 2 : 1))
    png_error(png, "unexpected row layout after the transformations");
  out.create(static_cast<int>(height), static_cast<int>(width), sample);
  rows.resize(height);
  for (png_uint_32 y = 0; y < height; ++y)
    rows[y] = out.ptr<png_byte>(static_cast<int>(y));
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

cv::Mat decode_png(const std::vector<uint8_t>& bytes, const std::string& name) {
  cv::Mat raw;
  std::vector<png_bytep> rows;
  PngSource src{bytes.data(), bytes.size(), 0, {0}};
  check(decode_png_into(src, raw, rows), name, "corrupt PNG: ", src.message);
  if (raw.depth() == CV_8U) return raw;
  cv::Mat rgb;
  raw.convertTo(rgb, CV_8U, 1.0 / 257.0);
  return rgb;
}

}  // namespace

// The first bytes are one of the supported formats' signatures.
// The first 64 KiB of a file of `size` bytes: not an image, or one OpenCV's decoder cannot take
// (above 2 GiB - 1: see decode_image_bytes), refused before the rest is read.
void check_signature(const std::vector<uint8_t>& bytes, const std::string& name,
                     std::uintmax_t size) {
  const Reader r(bytes, name);
  const bool ours = r.starts_with(0, "\xFF\xD8\xFF", 3) || r.starts_with(0, "\x89PNG\r\n\x1A\n", 8);
  const char* opencv = r.starts_with(0, "BM", 2)                                    ? "bmp"
                       : r.starts_with(0, "RIFF", 4) && r.starts_with(8, "WEBP", 4) ? "webp"
                       : is_tiff(r, 0)                                              ? "tiff"
                                                                                    : nullptr;
  check(ours || opencv, name,
        "not an image: unrecognised format (supported: JPEG, PNG, TIFF, BMP, WebP)");
  check(ours || size <= static_cast<std::uintmax_t>(std::numeric_limits<int>::max()), name,
        "too large for OpenCV's ", opencv, " decoder: ", size, " bytes, above 2 GiB - 1");
}

ImageInfo probe_image(const std::vector<uint8_t>& bytes, const std::string& name) {
  check(!bytes.empty(), name, "empty file (0 bytes)");
  const Reader r(bytes, name);
  ImageInfo info;
  if (r.starts_with(0, "\xFF\xD8\xFF", 3))
    info = probe_jpeg(r, name);
  else if (r.starts_with(0, "\x89PNG\r\n\x1A\n", 8))
    info = probe_png(r, name);
  else if (r.starts_with(0, "BM", 2))
    info = probe_bmp(r);
  else if (r.starts_with(0, "RIFF", 4) && r.starts_with(8, "WEBP", 4))
    info = probe_webp(r, name);
  else if (is_tiff(r, 0)) {
    try {
      const auto tags = read_tiff_ifd0(r, 0, "TIFF header");
      info = {"tiff", tags.width, tags.height, tags.orientation};
    } catch (const Error& e) {
      throw Error(name, e.message());
    }
  } else
    throw Error(name, "not an image: unrecognised format (supported: JPEG, PNG, TIFF, BMP, WebP)");
  check(info.width > 0 && info.height > 0, name, "corrupt ", info.format, " header: image size ",
        info.width, "x", info.height);
  return info;
}

cv::Mat apply_exif_orientation(const cv::Mat& image, int orientation) {
  cv::Mat out;
  switch (orientation) {
    case 2:
      cv::flip(image, out, 1);
      break;
    case 3:
      cv::rotate(image, out, cv::ROTATE_180);
      break;
    case 4:
      cv::flip(image, out, 0);
      break;
    case 5:
      cv::transpose(image, out);
      break;
    case 6:
      cv::rotate(image, out, cv::ROTATE_90_CLOCKWISE);
      break;
    case 7:
      cv::transpose(image, out);
      cv::flip(out, out, -1);
      break;
    case 8:
      cv::rotate(image, out, cv::ROTATE_90_COUNTERCLOCKWISE);
      break;
    default:
      out = image;
  }
  return out;
}

cv::Mat decode_image_bytes(const std::vector<uint8_t>& bytes, const std::string& name,
                           const DecodeOptions& options) {
  const ImageInfo info = probe_image(bytes, name);
  const int64_t pixels = int64_t{info.width} * info.height;
  check(pixels <= options.max_pixels, name, "image too large: ", info.width, "x", info.height,
        " = ", pixels, " pixels, above the limit of ", options.max_pixels);
  if (info.format == "jpeg") {
    check(jpeg_has_end(bytes), name, "truncated or corrupt JPEG: no end-of-image marker");
    char message[JMSG_LENGTH_MAX];
    cv::Mat rgb;
    const int decoded = jpeg_decode_rgb(bytes, info, options.reduce_to, &rgb, message);
    check(decoded >= 0, name, "corrupt JPEG stream: ", message);
    if (decoded == 1)
      return options.apply_orientation && info.orientation != 1
                 ? apply_exif_orientation(rgb, info.orientation)
                 : rgb;
  }
  if (info.format == "png") {
    const auto problem = png_chunk_problem(bytes);
    check(problem.empty(), name, problem);
    return decode_png(bytes, name);  // no EXIF orientation in PNG (probe_png: 1)
  }

  // cv::Mat counts its columns in int: a file of 2 GiB (the reading limit) overflowed to a
  // negative width, said as a corrupt image.
  check(bytes.size() <= static_cast<std::size_t>(std::numeric_limits<int>::max()), name,
        "too large for OpenCV's ", info.format, " decoder: ", bytes.size(),
        " bytes, above 2 GiB - 1");
  cv::Mat raw;
  std::string said;  // what OpenCV printed while it failed
  try {
    const CerrKept kept(&said);
    // IMREAD_UNCHANGED keeps the depth and skips OpenCV's own orientation handling: ours
    // covers TIFF as well and is tested.
    raw = cv::imdecode(
        cv::Mat(1, static_cast<int>(bytes.size()), CV_8U, const_cast<uint8_t*>(bytes.data())),
        cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    throw Error(name,
                concat("corrupt ", info.format, ": OpenCV could not decode it (", e.err, ")"));
  }
  if (raw.empty()) {
    const auto reason = opencv_reason(said);
    throw Error(name,
                concat("corrupt or truncated ", info.format, ": OpenCV could not decode it (",
                       reason.empty() ? "or has no " + info.format + " decoder" : reason, ")"));
  }
  // What was decoded, not only what the header said, is held to the limit.
  check(int64_t{raw.cols} * raw.rows <= options.max_pixels, name, "image too large: ", raw.cols,
        "x", raw.rows, " pixels decoded, above the limit of ", options.max_pixels);

  cv::Mat img8;
  switch (raw.depth()) {
    case CV_8U:
      img8 = raw;
      break;
    case CV_16U:
      raw.convertTo(img8, CV_8U, 1.0 / 257.0);
      break;
    case CV_32F:
    case CV_64F:
      raw.convertTo(img8, CV_8U, 255.0);
      break;
    default:
      throw Error(name, concat("unsupported sample depth (OpenCV depth ", raw.depth(), ")"));
  }
  cv::Mat rgb;
  switch (img8.channels()) {
    case 1:
      cv::cvtColor(img8, rgb, cv::COLOR_GRAY2RGB);
      break;
    case 3:
      cv::cvtColor(img8, rgb, cv::COLOR_BGR2RGB);
      break;
    case 4:
      cv::cvtColor(img8, rgb, cv::COLOR_BGRA2RGB);
      break;
    default:
      throw Error(name, concat("unsupported number of channels: ", img8.channels()));
  }
  if (options.apply_orientation && info.orientation != 1)
    rgb = apply_exif_orientation(rgb, info.orientation);
  return rgb;
}

namespace {

// read_file_bytes, with `signature` asked of the first 64 KiB before the rest is read.
std::vector<uint8_t> read_bytes(
    const std::string& path,
    const std::function<void(const std::vector<uint8_t>&, const std::string&, std::uintmax_t)>&
        signature) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  check(fs::exists(status), path, "no such file");
  check(!fs::is_directory(status), path, "is a folder, not a file");
  check(fs::is_regular_file(status), path,
        "is not a regular file (a device or a pipe cannot be an image)");
  // The largest image the default pixel limit admits, uncompressed 16-bit RGBA, is 800 MB.
  constexpr std::uintmax_t kMaxImageFileBytes = std::uintmax_t{2} << 30;
  const auto size = fs::file_size(path, ec);
  check(!ec && size <= kMaxImageFileBytes, path, "file of ", size,
        " bytes is above the image file limit of ", kMaxImageFileBytes, " bytes");
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), path, "cannot open: ", std::strerror(errno));
  std::vector<uint8_t> bytes(static_cast<std::size_t>(std::min<std::uintmax_t>(size, 65536)));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  check(!in.bad() && in.gcount() == static_cast<std::streamsize>(bytes.size()), path, "read error");
  if (size > bytes.size()) {
    if (signature) signature(bytes, path, size);
    bytes.resize(static_cast<std::size_t>(size));
    in.read(reinterpret_cast<char*>(bytes.data()) + 65536,
            static_cast<std::streamsize>(size - 65536));
    check(!in.bad(), path, "read error");
    bytes.resize(65536 + static_cast<std::size_t>(in.gcount()));  // the file may have shrunk
  }
  return bytes;
}

}  // namespace

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  return read_bytes(path, nullptr);
}

cv::Mat decode_image(const std::string& path, const DecodeOptions& options) {
  // The signature and the header first: a 2 GB file that is no image is refused from its first
  // 64 KiB, not after reading it all into memory.
  return decode_image_bytes(read_bytes(path, check_signature), path, options);
}

void write_image(const std::string& path, const cv::Mat& rgb) {
  check(!rgb.empty(), path, "cannot write an empty image");
  check(rgb.depth() == CV_8U && (rgb.channels() == 3 || rgb.channels() == 1), path,
        "expected an RGB or grey uint8 image, got type ", rgb.type());
  cv::Mat out;  // a new buffer: converting into a shared header would swap the caller's pixels
  if (rgb.channels() == 3)
    cv::cvtColor(rgb, out, cv::COLOR_RGB2BGR);
  else
    out = rgb;
  // Encoded in memory, then written through AtomicFile: a full disk is reported as such (with
  // the system's reason) and never leaves a truncated or empty image at `path`.
  const auto ext = std::filesystem::path(path).extension().string();
  check(!ext.empty(), path, "cannot write image: no file extension to choose the format");
  std::vector<uchar> encoded;
  bool ok = false;
  try {
    ok = cv::imencode(ext, out, encoded);
  } catch (const cv::Exception& e) {
    throw Error(path, concat("cannot encode image as ", ext, ": ", e.err));
  }
  check(ok, path, "cannot encode image as ", ext, " (unknown image extension)");
  AtomicFile file(path);
  file.write(encoded.data(), encoded.size());
  file.commit();
}

}  // namespace attnscope::preprocessing
