#include "datasets/dataset.h"

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets {

std::vector<int64_t> Dataset::class_counts() const {
  std::vector<int64_t> counts(class_names.size(), 0);
  for (const auto& s : samples)
    if (s.labelled()) ++counts.at(static_cast<std::size_t>(s.label));
  return counts;
}

std::vector<int64_t> Dataset::labels() const {
  std::vector<int64_t> out;
  out.reserve(samples.size());
  for (const auto& s : samples)
    out.push_back(s.label);
  return out;
}

std::string format_name(Format format) {
  switch (format) {
    case Format::kAuto:
      return "auto";
    case Format::kIsic2016:
      return "isic2016";
    case Format::kIsic2017:
      return "isic2017";
    case Format::kIsic2018:
      return "isic2018";
    case Format::kHam10000:
      return "ham10000";
    case Format::kIsic2019:
      return "isic2019";
    case Format::kIsic2020:
      return "isic2020";
    case Format::kGeneric:
      return "generic";
    case Format::kFolders:
      return "folders";
  }
  return "?";
}

Format format_from_name(const std::string& name) {
  for (auto f :
       {Format::kAuto, Format::kIsic2016, Format::kIsic2017, Format::kIsic2018, Format::kHam10000,
        Format::kIsic2019, Format::kIsic2020, Format::kGeneric, Format::kFolders})
    if (format_name(f) == formats::lower(name)) return f;
  throw Error("format", concat("unknown format '", name,
                               "' (known: auto, isic2016, isic2017, isic2018, ham10000, isic2019, "
                               "isic2020, generic, folders)"));
}

}  // namespace attnscope::datasets
