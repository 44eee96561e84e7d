#include <filesystem>
#include <fstream>
#include <limits>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "pipeline/checkpoint.h"
#include "pipeline/h5.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

struct NetImpl : torch::nn::Module {
  explicit NetImpl(int hidden) {
    fc1 = register_module("fc1", torch::nn::Linear(4, hidden));
    bn = register_module("bn", torch::nn::BatchNorm1d(hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 2));
  }
  torch::nn::Linear fc1 = nullptr, fc2 = nullptr;
  torch::nn::BatchNorm1d bn = nullptr;
};
TORCH_MODULE(Net);

TEST(Checkpoint, RoundTripsTensorsAndMeta) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  torch::manual_seed(1);
  Net a(8), b(8);
  {
    torch::NoGradGuard g;
    a->bn->running_mean.uniform_();
  }
  CheckpointMeta meta;
  meta.model_config = {{"arch", "net"}, {"hidden", 8}};
  meta.class_names = {"benign", "malignant"};
  meta.provenance = {{"seed", 1}};
  save_checkpoint(path, *a, meta);
  load_checkpoint(path, *b);
  for (const auto& p : a->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), b->named_parameters()[p.key()])) << p.key();
  EXPECT_TRUE(torch::equal(a->bn->running_mean, b->bn->running_mean));
  const auto back = read_checkpoint_meta(path);
  EXPECT_EQ(back.model_config, meta.model_config);
  EXPECT_EQ(back.class_names, meta.class_names);
  EXPECT_EQ(back.provenance["seed"], 1);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// Class names become predictions.csv's columns, results.h5's attribute and the report's
// labels: a file naming a class twice, an empty name or one with a terminal escape is refused
// at load, naming the file and the name.
TEST(Checkpoint, ClassNamesThatCannotNameOneClassEachAreRefused) {
  test::TempDir dir;
  Net net(4);
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"benign", "benign"}, "class 'benign' is named twice"},
      {{"benign", ""}, "class name '' is blank or holds a control character"},
      {{"mel\x1b[31m", "benign"}, "class name 'mel\\x1b[31m' is blank or holds"},
      {{"benign", "  "}, "class name '  ' is blank or holds"},
      {{"benign", "mal\xC2\x85"}, "class name 'mal\\u0085' is blank or holds"}};  // C1
  for (const auto& [names, expected] : cases) {
    const auto path = dir / "model.h5";
    CheckpointMeta meta;
    meta.class_names = names;
    save_checkpoint(path, *net, meta);
    const auto e = test::error_of([&] { read_checkpoint_meta(path); });
    EXPECT_NE(e.find(path + ":/@class_names: " + expected), std::string::npos) << e;
  }
  CheckpointMeta meta;
  meta.class_names = {"benign", "Benign", "mélanome"};
  save_checkpoint(dir / "ok.h5", *net, meta);
  EXPECT_EQ(read_checkpoint_meta(dir / "ok.h5").class_names, meta.class_names);
}

TEST(Checkpoint, StrictLoadListsEveryMismatch) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  Net small(8);
  save_checkpoint(path, *small, {});
  struct OtherImpl : torch::nn::Module {
    OtherImpl() {
      register_module("fc1", torch::nn::Linear(4, 16));
      register_module("head", torch::nn::Linear(16, 2));
    }
  };
  OtherImpl other;
  try {
    load_checkpoint(path, other);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.subject(), path);
    EXPECT_NE(what.find("head.weight"), std::string::npos) << what;  // missing
    EXPECT_NE(what.find("fc2.weight"), std::string::npos) << what;   // unexpected
    EXPECT_NE(what.find("tensor 'fc1.weight' has wrong shape: got [8, 4] in the file, "
                        "expected [16, 4]"),
              std::string::npos)
        << what;
  }
}

TEST(Checkpoint, SkipPrefixesLoadsABackbone) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  torch::manual_seed(2);
  Net a(8);
  save_checkpoint(path, *a, {});
  struct HeadlessImpl : torch::nn::Module {
    HeadlessImpl() {
      fc1 = register_module("fc1", torch::nn::Linear(4, 8));
      bn = register_module("bn", torch::nn::BatchNorm1d(8));
      fc2 = register_module("fc2", torch::nn::Linear(8, 5));
    }
    torch::nn::Linear fc1 = nullptr, fc2 = nullptr;
    torch::nn::BatchNorm1d bn = nullptr;
  };
  HeadlessImpl b;
  load_checkpoint(path, b, {true, {"fc2."}});
  EXPECT_TRUE(torch::equal(a->fc1->weight, b.fc1->weight));
}

// The independent reader: h5py sees every parameter under its dotted name.
TEST(Checkpoint, ReadableByH5py) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  Net a(3);
  CheckpointMeta meta;
  meta.class_names = {"benign", "malignant"};
  save_checkpoint(path, *a, meta);
  const auto r = test::run_process(test::python() +
                                   " -c \"import h5py,json,sys; f=h5py.File(sys.argv[1],'r'); "
                                   "print(sorted(f.keys())); print(f['fc1.weight'].shape); "
                                   "print(json.loads(f.attrs['class_names']))\" " +
                                   path);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("'bn.running_mean'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(3, 4)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("['benign', 'malignant']"), std::string::npos) << r.output;
}

TEST(Checkpoint, NonCheckpointFileIsRejected) {
  test::TempDir dir;
  const auto path = dir / "plain.h5";
  { auto f = h5::File::create(path); }
  Net a(3);
  EXPECT_THROW(load_checkpoint(path, *a), Error);
  EXPECT_THROW(read_checkpoint_meta(dir / "missing.h5"), Error);
}

// A flipped bit anywhere in a stored tensor is caught by the checksum: the oracle finds the
// tensor's bytes in the file and flips one bit of them directly, outside HDF5.
TEST(Checkpoint, FlippedBitInATensorIsDetected) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  torch::manual_seed(3);
  Net a(8), b(8);
  save_checkpoint(path, *a, CheckpointMeta{});
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const auto weight = a->fc1->weight.detach().contiguous();
  const std::string needle(static_cast<const char*>(weight.data_ptr()),
                           static_cast<std::size_t>(weight.numel()) * sizeof(float));
  const auto at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos) << "fc1.weight's bytes not found in the file";
  bytes[at + 5] = static_cast<char>(bytes[at + 5] ^ 0x10);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  const auto message = test::error_of([&] { load_checkpoint(path, *b); });
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("checksum mismatch"), std::string::npos) << message;
}

std::string checksum_script() {
  return std::string(ATTNSCOPE_SOURCE_DIR) + "/tests/python/checkpoint_checksum.py";
}

// The checksum covers the whole file: the JSON attributes that decide predictions (threshold,
// temperature, preprocessing), what `add` writes (a run's optimiser state) and the tensors.
// The oracle is an h5py implementation of the same definition (checkpoint_checksum.py): it
// computes the stored value, and a file it re-seals after an edit loads again.
TEST(Checkpoint, ChecksumCoversConfigsAndTrainingStateAsH5pyComputesIt) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  torch::manual_seed(4);
  Net a(8), b(8);
  CheckpointMeta meta;
  meta.preprocessing_config = {{"size", 224}};
  meta.extra = {{"threshold", 0.5}, {"temperature", 1.25}};
  save_checkpoint(path, *a, meta, [&](hid_t root) {
    auto group = h5::require_group(root, "train_state", path);
    h5::write_attribute(group.get(), "loop", R"({"epoch": 3})", path);
    h5::write_tensor(group.get(), "optimizer:fc1.weight:momentum", torch::ones({8, 4}), path);
  });
  auto stored = [&] {
    auto file = h5::File::open(path);
    return h5::read_string_attribute(file.id(), "checksum", path);
  };
  const auto original = stored();
  auto r = test::run_process(test::python() + " " + checksum_script() + " checksum " + path);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output, original + "\n");
  ASSERT_EQ(test::error_of([&] { load_checkpoint(path, *b); }), "");

  const auto copy = dir / "copy.h5";
  std::filesystem::copy_file(path, copy);
  // Each edit, made with h5py as a person would, is refused; re-sealed, it loads again.
  for (const std::string edit :
       {"f.attrs['extra'] = f.attrs['extra'].replace('0.5', '0.6')",
        "f.attrs['preprocessing_config'] = f.attrs['preprocessing_config'].replace('4', '5')",
        "f['train_state'].attrs['loop'] = f['train_state'].attrs['loop'].replace('3', '4')",
        "f['train_state/optimizer:fc1.weight:momentum'][0, 0] = float('nan')",
        "f['fc2.bias'][0] += 1", "f['train_state'].create_group('more')"}) {
    std::filesystem::copy_file(copy, path, std::filesystem::copy_options::overwrite_existing);
    r = test::run_process(test::python() + " -c \"import h5py\nwith h5py.File('" + path +
                          "', 'a') as f: " + edit + "\"");
    ASSERT_EQ(r.status, 0) << edit << ": " << r.output;
    const auto message = test::error_of([&] { load_checkpoint(path, *b); });
    EXPECT_EQ(message.rfind(path + ": checksum mismatch (stored " + original, 0), 0u)
        << edit << ": " << message;
    r = test::run_process(test::python() + " " + checksum_script() + " seal " + path);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(test::error_of([&] { verify_checkpoint(path); }), "") << edit;
  }
}

// An object under two names (h5py's f['b'] = f['a'] makes a hard link) is refused before the
// checksum is computed: 8 groups each linking the next 8 times made 8^7 paths in a few KB, and
// the verification hung.
TEST(Checkpoint, AnObjectUnderTwoNamesIsRefused) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  Net a(8), b(8);
  save_checkpoint(path, *a, CheckpointMeta{});
  const auto r = test::run_process(
      test::python() + " -c \"import h5py\nwith h5py.File('" + path +
      "', 'a') as f:\n    g = f.create_group('g')\n    g['again'] = f['fc1.weight']\"");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto message = test::error_of([&] { load_checkpoint(path, *b); });
  EXPECT_NE(message.find(":/g/again: is an object the file holds under another name too: not an "
                         "attnscope checkpoint"),
            std::string::npos)
      << message;
}

// A format_version 2 file (the checksum over the root's tensors only, as attnscope wrote
// before) still loads, and its tensor checksum is still checked.
TEST(Checkpoint, Version2FilesStillLoadWithTheirTensorChecksum) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  torch::manual_seed(5);
  Net a(8), b(8);
  save_checkpoint(path, *a, CheckpointMeta{});
  // Version 2 as written then: FNV-1a 64 over the root's datasets, no attributes.
  const auto r = test::run_process(
      test::python() +
      " -c \"import sys, h5py; sys.path.insert(0, '" ATTNSCOPE_SOURCE_DIR
      "/tests/python'); import checkpoint_checksum as c\n"
      "with h5py.File('" +
      path +
      "', 'a') as f:\n    del f.attrs['checksum']\n    f.attrs['format_version'] = '2'\n"
      "    f.attrs['tensor_checksum'] = c.checksum('" +
      path + "', attributes=False)\"");
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_EQ(test::error_of([&] { load_checkpoint(path, *b); }), "");
  EXPECT_TRUE(torch::equal(a->fc1->weight, b->fc1->weight));
  {
    auto file = h5::File::open(path, true);
    h5::write_tensor(file.id(), "extra_tensor", torch::zeros({2}), path);
    file.close();
  }
  Net c(8);
  EXPECT_NE(test::error_of([&] {
              load_checkpoint(path, *c, {false, {}});
            }).find("tensor checksum mismatch"),
            std::string::npos);
}

TEST(Checkpoint, NanWeightsAreRefused) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  Net a(8), b(8);
  {
    torch::NoGradGuard g;
    a->fc2->bias[1] = std::numeric_limits<float>::quiet_NaN();
  }
  save_checkpoint(path, *a, CheckpointMeta{});
  const auto message = test::error_of([&] { load_checkpoint(path, *b); });
  EXPECT_NE(message.find("'fc2.bias' holds NaN or infinite values"), std::string::npos) << message;
  // An infinite weight: NaN or empty outputs, silently (a seq2seq model translated to "").
  Net c(8);
  {
    torch::NoGradGuard g;
    c->fc1->weight[0][0] = -std::numeric_limits<float>::infinity();
  }
  const auto inf_path = dir / "inf.h5";
  save_checkpoint(inf_path, *c, CheckpointMeta{});
  const auto inf_message = test::error_of([&] { load_checkpoint(inf_path, *b); });
  EXPECT_NE(inf_message.find("'fc1.weight' holds NaN or infinite values"), std::string::npos)
      << inf_message;
  // A negative running variance: BatchNorm's square root of it is NaN.
  Net d(8);
  {
    torch::NoGradGuard g;
    d->bn->running_var[3] = -0.5;
  }
  const auto var_path = dir / "var.h5";
  save_checkpoint(var_path, *d, CheckpointMeta{});
  const auto var_message = test::error_of([&] { load_checkpoint(var_path, *b); });
  EXPECT_NE(var_message.find("'bn.running_var' holds negative variances"), std::string::npos)
      << var_message;
  // A float64 weight finite in the file and infinite in the model's float32 (1e300 loaded
  // as inf: a seq2seq model translated to "" with exit 0).
  Net e(8);
  e->to(torch::kDouble);
  {
    torch::NoGradGuard g;
    e->fc1->weight[0][1] = 1e300;
  }
  const auto wide_path = dir / "wide.h5";
  save_checkpoint(wide_path, *e, CheckpointMeta{});
  const auto wide_message = test::error_of([&] { load_checkpoint(wide_path, *b); });
  EXPECT_NE(wide_message.find("'fc1.weight' holds values beyond the range of the model's Float "
                              "(stored as Double)"),
            std::string::npos)
      << wide_message;
  {
    torch::NoGradGuard g;
    e->fc1->weight[0][1] = 1e30;  // within float's range: loads
  }
  save_checkpoint(wide_path, *e, CheckpointMeta{});
  EXPECT_EQ(test::error_of([&] { load_checkpoint(wide_path, *b); }), "");
  EXPECT_FLOAT_EQ(b->fc1->weight[0][1].item<float>(), 1e30f);
}

// A dataset that declares more than it stores (chunked, no chunk written: a 2 GiB claim in a
// file of kilobytes) is refused naming it, before anything reads it: the checksum read it
// whole, 6 GB of memory and 20 s before "checksum mismatch". So is a tensor of the model's
// own shape whose chunks are missing (a cut or crafted copy).
TEST(Checkpoint, ADatasetThatStoresNothingIsRefusedBeforeItIsRead) {
  test::TempDir dir;
  Net a(8), b(8);
  for (const auto& [name, code] : std::vector<std::pair<std::string, std::string>>{
           {"huge",
            "f.create_dataset('zz_huge', shape=(1 << 19, 1 << 10), dtype='f4', "
            "chunks=(1024, 1024))"},
           {"empty",
            "s = f['fc1.weight'].shape; del f['fc1.weight']; "
            "f.create_dataset('fc1.weight', shape=s, dtype='f4', chunks=s)"}}) {
    const auto path = dir / (name + ".h5");
    save_checkpoint(path, *a, CheckpointMeta{});
    const auto r = test::run_process(test::python() + " -c \"import h5py; f = h5py.File('" + path +
                                     "', 'a'); " + code + "\"");
    ASSERT_EQ(r.status, 0) << r.output;
    ASSERT_LT(std::filesystem::file_size(path), 1u << 20);
    const auto message = test::error_of([&] { load_checkpoint(path, *b); });
    EXPECT_NE(message.find(path + (name == "huge" ? ":/zz_huge" : ":/fc1.weight") +
                           ": stores no data for all or part of its shape"),
              std::string::npos)
        << message;
  }
  // A checkpoint rewritten with every tensor deflated in chunks that overhang its shape (as
  // h5repack -f GZIP and h5py's compression= write them) stores every value, and loads: HDF5
  // calls such datasets "partly allocated".
  const auto packed = dir / "packed.h5";
  save_checkpoint(packed, *a, CheckpointMeta{});
  const auto r = test::run_process(
      test::python() + " -c \"import h5py; f = h5py.File('" + packed +
      "', 'a')\nfor k in [k for k in f if isinstance(f[k], h5py.Dataset) and f[k].ndim]:\n"
      "    d, attrs = f[k][()], dict(f[k].attrs); del f[k]\n"
      "    n = f.create_dataset(k, data=d, compression='gzip', chunks=tuple(s // 2 + 1 "
      "for s in d.shape))\n"
      "    n.attrs.update(attrs)\nprint(f['fc1.weight'].compression, f['fc1.weight'].chunks)\"");
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_NE(r.output.find("gzip"), std::string::npos) << r.output;
  EXPECT_EQ(test::error_of([&] { load_checkpoint(packed, *b); }), "");
  EXPECT_TRUE(torch::equal(a->fc1->weight, b->fc1->weight));
}

// An output named two ways before either exists ("s.json", "./s.json") is one file: compared
// after making both absolute (weakly_canonical kept a relative path relative).
TEST(OutputChecks, SameFileBeforeItExistsWhateverTheSpelling) {
  test::TempDir dir;
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  EXPECT_TRUE(same_file("s.json", "./s.json"));
  EXPECT_TRUE(same_file("s.json", dir / "s.json"));
  EXPECT_TRUE(same_file("a/../s.json", "s.json"));
  EXPECT_FALSE(same_file("s.json", "t.json"));
  std::filesystem::current_path(cwd);
}

TEST(Checkpoint, UnknownFormatVersionIsRefusedAndVersion1StillLoads) {
  test::TempDir dir;
  const auto path = dir / "model.h5";
  Net a(8), b(8);
  save_checkpoint(path, *a, CheckpointMeta{});
  auto set_version = [&](const std::string& version) {
    auto file = h5::File::open(path, true);
    h5::write_attribute(file.id(), "format_version", version, path);
    file.close();
  };
  set_version("99");
  const auto message = test::error_of([&] { load_checkpoint(path, *b); });
  EXPECT_NE(message.find("format_version 99 is not supported"), std::string::npos) << message;
  EXPECT_NE(test::error_of([&] { read_checkpoint_meta(path); }), "");
  // '3' -> '1' is one flipped bit: a file that carries a checksum is verified whatever its
  // format_version says (a v1 file never had one), so the edit is a mismatch, not a v1 file.
  set_version("1");
  EXPECT_EQ(
      test::error_of([&] { load_checkpoint(path, *b); }).rfind(path + ": checksum mismatch", 0),
      0u);
  {
    auto file = h5::File::open(path, true);
    H5Adelete(file.id(), "checksum");
    file.close();
  }
  // written before checksums existed: loads without one
  EXPECT_EQ(test::error_of([&] { load_checkpoint(path, *b); }), "");
  EXPECT_TRUE(torch::equal(a->fc1->weight, b->fc1->weight));
}

}  // namespace
}  // namespace attnscope::pipeline
