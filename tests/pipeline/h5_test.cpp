#include <fstream>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "pipeline/h5.h"
#include "test_support.h"

namespace attnscope::pipeline::h5 {
namespace {

TEST(H5, TensorsAndAttributesRoundTrip) {
  test::TempDir dir;
  const auto path = dir / "t.h5";
  torch::manual_seed(0);
  auto f = torch::randn({3, 4, 5});
  auto l = torch::arange(10, torch::kLong);
  auto u = torch::randint(0, 255, {2, 3}, torch::kByte);
  {
    auto file = File::create(path);
    write_tensor(file.id(), "a.weight", f, path);
    write_tensor(file.id(), "grp/sub/idx", l, path, 4);
    write_tensor(file.id(), "bytes", u, path);
    write_attribute(file.id(), "config", "{\"x\": \"\xC3\xA9\"}", path);
  }
  auto file = File::open(path);
  EXPECT_TRUE(torch::equal(read_tensor(file.id(), "a.weight", path), f));
  EXPECT_TRUE(torch::equal(read_tensor(file.id(), "grp/sub/idx", path), l));
  EXPECT_TRUE(torch::equal(read_tensor(file.id(), "bytes", path), u));
  EXPECT_EQ(read_string_attribute(file.id(), "config", path), "{\"x\": \"\xC3\xA9\"}");
  EXPECT_EQ(dataset_shape(file.id(), "a.weight", path), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_TRUE(exists(file.id(), "grp/sub"));
  EXPECT_FALSE(exists(file.id(), "grp/nope/idx"));
}

// The independent reader: h5py must see the same numbers and the attribute as str.
TEST(H5, H5pyReadsWhatWeWrite) {
  test::TempDir dir;
  const auto path = dir / "t.h5";
  auto f = torch::arange(12, torch::kFloat).reshape({3, 4}) / 4;
  {
    auto file = File::create(path);
    write_tensor(file.id(), "w", f, path);
    write_attribute(file.id(), "note", "hello", path);
  }
  const auto r = test::run_process(test::python() +
                                   " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
                                   "w=f['w'][()]; a=f.attrs['note']; "
                                   "print(w.shape, float(w.sum()), type(a).__name__, a)\" " +
                                   path);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(3, 4) 16.5 str hello"), std::string::npos) << r.output;
}

TEST(H5, OpeningANonHdf5FileNamesIt) {
  test::TempDir dir;
  const auto path = dir / "not.h5";
  { std::ofstream(path) << "plain text"; }
  try {
    File::open(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.subject(), path);
    EXPECT_NE(e.message().find("not an HDF5 file"), std::string::npos);
  }
}

// OutputFile: nothing reaches the target before commit(); an abandoned write (an exception,
// a full disk) leaves the previous file and no temporary file behind.
TEST(H5, OutputFileReplacesOnlyOnCommit) {
  test::TempDir dir;
  const auto path = dir / "out.h5";
  {
    OutputFile out(path);
    write_tensor(out.id(), "x", torch::arange(3, torch::kLong), path);
    out.commit();
  }
  {
    OutputFile out(path);
    write_tensor(out.id(), "x", torch::arange(5, torch::kLong), path);
    // no commit: abandoned
  }
  auto file = File::open(path);
  EXPECT_TRUE(torch::equal(read_tensor(file.id(), "x", path), torch::arange(3, torch::kLong)));
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1) << "a temporary file was left behind";
}

// HDF5's own reason reaches the message (it is no longer printed as a stack on stderr).
TEST(H5, ErrorsCarryHdf5sReason) {
  test::TempDir dir;
  const auto message = test::error_of([&] { File::create(dir / "no/such/folder/x.h5"); });
  EXPECT_NE(message.find("cannot create HDF5 file"), std::string::npos) << message;
  EXPECT_NE(message.find("No such file or directory"), std::string::npos) << message;
}

}  // namespace
}  // namespace attnscope::pipeline::h5
