#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <future>
#include <iterator>

#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/threads.h"
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

// What stands where a dataset belongs is said in the reader's words: nothing, a group, a link
// to nothing, a link to a file that is not there (HDF5's reason). Each for every reader of a
// dataset (it said "no such dataset (not a dataset)" of a group).
TEST(H5, WhatStandsWhereADatasetBelongsIsSaid) {
  test::TempDir dir;
  const auto path = dir / "w.h5";
  {
    auto file = File::create(path);
    write_tensor(file.id(), "x", torch::zeros({2}), path);
    require_group(file.id(), "g", path);
    ASSERT_GE(H5Lcreate_soft("/nowhere", file.id(), "soft", H5P_DEFAULT, H5P_DEFAULT), 0);
    ASSERT_GE(H5Lcreate_external("missing.h5", "/x", file.id(), "ext", H5P_DEFAULT, H5P_DEFAULT),
              0);
  }
  auto file = File::open(path);
  for (const auto& [name, says] : std::vector<std::pair<std::string, std::string>>{
           {"y", ":/y: no such dataset"},
           {"g", ":/g: is a group where a dataset belongs"},
           {"soft", ":/soft: is a link to nothing where a dataset belongs"},
           {"ext",
            ":/ext: is a link into another file that gives no dataset here (unable to open "
            "external file"}}) {
    for (const auto& [reader, read] : std::vector<std::pair<std::string, std::function<void()>>>{
             {"read_tensor", [&, name = name] { read_tensor(file.id(), name, path); }},
             {"dataset_shape", [&, name = name] { dataset_shape(file.id(), name, path); }},
             {"check_filters_available",
              [&, name = name] { check_filters_available(file.id(), name, path); }},
             {"read_string_rows", [&, name = name] { read_string_rows(file.id(), name, path); }}}) {
      SCOPED_TRACE(name + " " + reader);
      try {
        read();
        ADD_FAILURE() << "no error";
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(path + says, 0), 0u) << e.what();
      }
    }
  }
  EXPECT_EQ(read_tensor(file.id(), "x", path).numel(), 2);
}

// The same where a group belongs: in the middle of a path (exists, and every reader through it)
// and where require_group opens one. A dangling link there was "is not a group (a file of
// another layout?)", without HDF5's reason.
TEST(H5, WhatStandsWhereAGroupBelongsIsSaid) {
  test::TempDir dir;
  const auto path = dir / "w.h5";
  {
    auto file = File::create(path);
    write_tensor(file.id(), "x", torch::zeros({2}), path);
    write_tensor(file.id(), "g/x", torch::zeros({2}), path);
    ASSERT_GE(H5Lcreate_soft("/nowhere", file.id(), "soft", H5P_DEFAULT, H5P_DEFAULT), 0);
    ASSERT_GE(H5Lcreate_external("missing.h5", "/g", file.id(), "ext", H5P_DEFAULT, H5P_DEFAULT),
              0);
  }
  auto file = File::open(path);
  for (const auto& [name, says] : std::vector<std::pair<std::string, std::string>>{
           {"x", ":/x: is a dataset where a group belongs"},
           {"soft", ":/soft: is a link to nothing where a group belongs"},
           {"ext",
            ":/ext: is a link into another file that gives no group here (unable to open "
            "external file"}}) {
    for (const auto& [reader, read] : std::vector<std::pair<std::string, std::function<void()>>>{
             {"exists", [&, name = name] { exists(file.id(), name + "/y"); }},
             {"read_tensor", [&, name = name] { read_tensor(file.id(), name + "/y", path); }},
             {"require_group", [&, name = name] { require_group(file.id(), name, path); }}}) {
      SCOPED_TRACE(name + " " + reader);
      const auto e = test::error_of(read);
      EXPECT_EQ(e.rfind(path + says, 0), 0u) << e;
    }
  }
  EXPECT_TRUE(exists(file.id(), "g/x"));
  EXPECT_FALSE(exists(file.id(), "g/y"));
  EXPECT_EQ(read_tensor(require_group(file.id(), "g", path).get(), "x", path).numel(), 2);
}

// An error inside a group names the object by its whole path in the file ("al.h5:/sentences/
// 000991"; it said "al.h5:/000991").
TEST(H5, ErrorsInsideAGroupNameTheWholePath) {
  test::TempDir dir;
  const auto path = dir / "g.h5";
  {
    auto file = File::create(path);
    write_tensor(file.id(), "sentences/000001/x", torch::zeros({2}), path);
  }
  auto file = File::open(path);  // read-only: nothing can be created
  const auto group = require_group(file.id(), "sentences", path);
  for (const auto& [what, says] : std::vector<std::pair<std::function<void()>, std::string>>{
           {[&] { require_group(group.get(), "000002", path); },
            path + ":/sentences/000002: cannot create group"},
           {[&] { read_tensor(group.get(), "000001/y", path); },
            path + ":/sentences/000001/y: no such dataset"},
           {[&] { read_tensor(file.id(), "sentences/000001/y", path); },
            path + ":/sentences/000001/y: no such dataset"},
           {[&] { read_string_attribute(group.get(), "nope", path); },
            path + ":/sentences/@nope: no such attribute"},
           {[&] { read_string_attribute(file.id(), "nope", path); },
            path + ":/@nope: no such attribute"}}) {
    try {
      what();
      ADD_FAILURE() << says;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(says, 0), 0u) << e.what();
    }
  }
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

// An empty file (a write that never started) and a folder are said as such.
TEST(H5, AnEmptyFileAndAFolderAreSaidAsSuch) {
  test::TempDir dir;
  std::ofstream{dir / "empty.h5"};
  std::filesystem::create_directories(dir / "folder.h5");
  EXPECT_EQ(test::error_of([&] { File::open(dir / "empty.h5"); }),
            dir / "empty.h5" +
                ": is empty (0 bytes), not an HDF5 file: a copy or write that did not finish?");
  EXPECT_EQ(test::error_of([&] { File::open(dir / "folder.h5"); }),
            dir / "folder.h5" + ": is a folder, not an HDF5 file");
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

// A cut file and a damaged chunk are said in plain words: the sizes of a cut file (the oracle:
// the file's size before and after cutting), and a chunk whose Fletcher-32 checksum does not
// hold (h5py writes it; one byte changed) as damage, not HDF5's "truncated file: eof = ...".
TEST(H5, ACutFileAndADamagedChunkAreSaidInPlainWords) {
  test::TempDir dir;
  const auto path = dir / "whole.h5";
  {
    auto file = File::create(path);
    write_tensor(file.id(), "x", torch::arange(20000, torch::kLong), path);
  }
  const auto size = std::filesystem::file_size(path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto cut = dir / "cut.h5";
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  const auto m = test::error_of([&] { File::open(cut); });
  EXPECT_NE(m.find(concat("the file is cut short: it holds ", bytes.size() / 2,
                          " bytes, its header says ", size)),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("eof ="), std::string::npos) << m;

  const auto checked = dir / "checked.h5";
  const auto py = test::run_process(test::python() +
                                    " -c \"import h5py,sys,numpy as np\n"
                                    "with h5py.File(sys.argv[1],'w') as f:\n"
                                    "  f.create_dataset('x', data=np.arange(1000), chunks=(100,), "
                                    "fletcher32=True)\n"
                                    "  o=f['x'].id.get_chunk_info(3).byte_offset\n"
                                    "b=bytearray(open(sys.argv[1],'rb').read()); b[o+5]^=1\n"
                                    "open(sys.argv[1],'wb').write(b); print('ok')\" " +
                                    checked + " 2>&1");
  ASSERT_EQ(py.output, "ok\n");
  auto file = File::open(checked);
  const auto d = test::error_of([&] { read_tensor(file.id(), "x", checked); });
  EXPECT_NE(d.find("a chunk's Fletcher-32 checksum does not match its data: the file is damaged"),
            std::string::npos)
      << d;
  EXPECT_EQ(plain_reason("no such thing"), "no such thing");
  // A flipped bit of the stored end-of-file address: a damaged header, not a cut copy.
  EXPECT_EQ(plain_reason("truncated file: eof = 96000, sblock->base_addr = 0, stored_eof = "
                         "18446744073705902344"),
            "the file's header is damaged: it puts the end of the file at byte "
            "18446744073705902344, the file holds 96000 bytes");
}

// read_rows_as_float reads whole chunks about 512 rows at a time (one read of every row kept a
// selection per chunk: 140 MB for 20,000 one-row chunks) and, where a chunk does not hold, reads
// that block's chunks one by one: the damaged chunks' rows are filled and named, in every
// block, and the others are read. h5py writes rows of value i in chunks of 3 rows and flips a
// byte of the chunks holding rows 5, 700 and 1299 (the last, partial chunk).
TEST(H5, RowsOfDamagedChunksAreFilledAndNamedInEveryBlock) {
  test::TempDir dir;
  const auto path = dir / "rows.h5";
  const auto py = test::run_process(
      test::python() +
      " -c \"import h5py,sys,numpy as np\n"
      "v = np.repeat(np.arange(1300, dtype=np.float32), 4).reshape(1300, 2, 2)\n"
      "with h5py.File(sys.argv[1],'w') as f:\n"
      "  f.create_dataset('m', data=v, chunks=(3, 2, 2), fletcher32=True)\n"
      "  spots=[f['m'].id.get_chunk_info_by_coord((r, 0, 0)).byte_offset for r in (5, 700, 1299)]\n"
      "b=bytearray(open(sys.argv[1],'rb').read())\n"
      "for o in spots: b[o+2]^=1\n"
      "open(sys.argv[1],'wb').write(b); print('ok')\" " +
      path + " 2>&1");
  ASSERT_EQ(py.output, "ok\n");
  auto file = File::open(path);
  for (const int64_t rows : {1300, 700, 3}) {
    SCOPED_TRACE(rows);
    std::vector<int64_t> bad;
    std::string reason;
    const auto m = read_rows_as_float(file.id(), "m", path, rows, -1.0f, &bad, &reason);
    ASSERT_EQ(m.sizes(), (std::vector<int64_t>{rows, 2, 2}));
    std::vector<int64_t> want;
    for (const int64_t r : {3, 4, 5, 699, 700, 701, 1299})
      if (r < rows) want.push_back(r);
    EXPECT_EQ(bad, want);
    auto expected =
        torch::arange(rows, torch::kFloat).view({rows, 1, 1}).expand({rows, 2, 2}).clone();
    for (const auto r : want)
      expected[r].fill_(-1.0f);
    EXPECT_TRUE(torch::equal(m, expected));
    EXPECT_EQ(reason.empty(), want.empty()) << reason;
    if (!want.empty())
      EXPECT_NE(reason.find("Fletcher-32 checksum does not match"), std::string::npos) << reason;
  }
}

// A group whose index is damaged part way (the last symbol-table node of 40 members): listing
// it is an error naming the file, the group and HDF5's reason, not the part before the damage
// (merge took such a file for one made with other options). h5py lists the intact file's 40.
TEST(H5, AGroupWhoseIndexIsDamagedIsNotListedInPart) {
  test::TempDir dir;
  const auto path = dir / "members.h5";
  const auto py = test::run_process(test::python() +
                                    " -c \"import h5py,sys,numpy as np\n"
                                    "with h5py.File(sys.argv[1],'w') as f:\n"
                                    "  g=f.create_group('g')\n"
                                    "  for i in range(40): g['d%02d' % i]=np.arange(3)\n"
                                    "print(len(h5py.File(sys.argv[1],'r')['g']))\" " +
                                    path + " 2>&1");
  ASSERT_EQ(py.output, "40\n");
  {
    auto file = File::open(path);
    EXPECT_EQ(children(require_group(file.id(), "g", path).get()).size(), 40u);
  }
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto last = bytes.rfind("SNOD");
  ASSERT_NE(last, std::string::npos);
  ASSERT_NE(bytes.find("SNOD"), last);  // not the root group's only node
  bytes.replace(last, 4, "XXXX");
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  auto file = File::open(path);
  auto group = require_group(file.id(), "g", path);
  const auto e = test::error_of([&] { children(group.get()); });
  EXPECT_NE(e.find(path + ":/g: cannot list the group's members (a damaged file?)"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("signature"), std::string::npos) << e;
  // A member looked up through the damaged node is no "missing" member either.
  std::string lookup;
  for (int i = 0; i < 40 && lookup.empty(); ++i)
    lookup = test::error_of([&] { exists(file.id(), concat("g/d", i / 10, i % 10)); });
  EXPECT_NE(lookup.find(":/g/d"), std::string::npos) << lookup;
  EXPECT_NE(lookup.find("cannot look it up (a damaged file?)"), std::string::npos) << lookup;
  EXPECT_NE(lookup.find("signature"), std::string::npos) << lookup;
  EXPECT_FALSE(exists(file.id(), "nothing/here"));
  // A dataset where a group belongs (another layout, not damage) is said so.
  const auto other = dir / "other.h5";
  {
    auto out = File::create(other);
    write_tensor(out.id(), "x", torch::zeros({2}), other);
  }
  auto again = File::open(other);
  EXPECT_EQ(test::error_of([&] { exists(again.id(), "x/y"); }),
            other + ":/x: is a dataset where a group belongs");
}

// Variable-length strings as h5py writes them (thousands, empty, non-ASCII, one larger than a
// 4 KiB heap collection), read back by attnscope's own global-heap reader: whole, as a
// hyperslab, and as an attribute; the oracle is the list h5py wrote, saved as JSON.
TEST(H5, VariableLengthStringsWrittenByH5pyReadBackTheSame) {
  test::TempDir dir;
  const auto path = dir / "s.h5";
  const auto expected_path = dir / "s.json";
  const auto r = test::run_process(
      test::python() +
      " -c \"import h5py,json,sys; "
      "v=['id_%d_' % i + 'x' * (i % 37) for i in range(3000)]; "
      "v[5]=''; v[6]='l\\u00e9sion \\u2013 na\\u00efve'; v[7]='y' * 10000; "
      "f=h5py.File(sys.argv[1],'w'); "
      "f.create_dataset('ids', data=v, dtype=h5py.string_dtype()); "
      "f.attrs['note']='\\u00e9t\\u00e9 ' * 3000; f.close(); "
      "json.dump({'ids': v, 'note': '\\u00e9t\\u00e9 ' * 3000}, open(sys.argv[2],'w'))\" " +
      path + " " + expected_path);
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream in(expected_path);
  const auto expected = nlohmann::json::parse(in);
  const auto ids = expected["ids"].get<std::vector<std::string>>();
  auto file = File::open(path);
  Handle set(H5Dopen2(file.id(), "ids", H5P_DEFAULT));
  EXPECT_EQ(read_vlen_strings(set.get(), H5S_ALL, H5S_ALL, ids.size(), path), ids);
  Handle space(H5Dget_space(set.get()));
  hsize_t start = 4, count = 1000;
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr);
  Handle memory(H5Screate_simple(1, &count, nullptr));
  EXPECT_EQ(read_vlen_strings(set.get(), memory.get(), space.get(), count, path),
            std::vector<std::string>(ids.begin() + 4, ids.begin() + 1004));
  EXPECT_EQ(read_string_attribute(file.id(), "note", path), expected["note"].get<std::string>());
}

// A dataset of another element type than a tensor's is said in words (a string stored where
// a tensor belongs was "unsupported HDF5 element type (class 3, ...)").
TEST(H5, ADatasetThatIsNoTensorSaysWhatItHolds) {
  test::TempDir dir;
  const auto path = dir / "k.h5";
  const auto r = test::run_process(
      test::python() +
      " -c \"import h5py,sys,numpy as np; f=h5py.File(sys.argv[1],'w'); f['text']='x'; "
      "f['flags']=np.array([True, False]); f['half']=np.zeros(3, np.float16); "
      "f['pairs']=np.zeros(2, dtype=[('a','<i4'),('b','<f8')]); f.close()\" " +
      path);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto file = File::open(path);
  for (const auto& [name, kind] : std::vector<std::pair<std::string, std::string>>{
           {"text", "holds strings ("},
           {"flags", "holds enumerated values (booleans, in h5py) (1 byte each)"},
           {"half", "holds floating-point numbers of another width (2 bytes each)"},
           {"pairs", "holds compound records (12 bytes each)"}}) {
    try {
      (void)read_tensor(file.id(), name, path);
      ADD_FAILURE() << name << " was read";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path + ":/" + name + ": " + kind), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("not a tensor of float32"), std::string::npos)
          << e.what();
    }
  }
}

// A crafted heap (HDF5 1.10.8 itself would copy 180 GB for the first case: fuzzing found it)
// is refused with one message naming the attribute and what is wrong.
TEST(H5, CraftedGlobalHeapIsRefusedNamingTheAttribute) {
  test::TempDir dir;
  const auto good = dir / "good.h5";
  {
    auto file = File::create(good);
    write_attribute(file.id(), "config", "{\"arch\": \"attn_small\"}", good);
  }
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto gcol = bytes.find("GCOL");
  ASSERT_NE(gcol, std::string::npos);
  // Object 1 follows the 16-byte collection header: index, refs, reserved, then its size.
  ASSERT_EQ(bytes[gcol + 16], 1);
  auto crafted = [&](const char* name, std::size_t at, const std::string& patch) {
    auto copy = bytes;
    copy.replace(at, patch.size(), patch);
    const auto path = dir / name;
    std::ofstream(path, std::ios::binary) << copy;
    auto file = File::open(path);
    return test::error_of([&] { read_string_attribute(file.id(), "config", path); });
  };
  const std::string huge("\x00\x00\x00\x00\x2a\x00\x00\x00", 8);
  auto m = crafted("size.h5", gcol + 24, huge);
  EXPECT_NE(m.find("size.h5:/@config"), std::string::npos) << m;
  EXPECT_NE(m.find("corrupt global heap"), std::string::npos) << m;
  EXPECT_NE(m.find("exceeds its collection"), std::string::npos) << m;
  m = crafted("index.h5", gcol + 16, std::string("\x07\x00", 2));
  EXPECT_NE(m.find("no object 1"), std::string::npos) << m;
  m = crafted("signature.h5", gcol, "GCOX");
  EXPECT_NE(m.find("no collection signature"), std::string::npos) << m;
  m = crafted("collection.h5", gcol + 8, huge);
  EXPECT_NE(m.find("collection size"), std::string::npos) << m;
  m = crafted("short.h5", gcol + 24, std::string("\x03\x00\x00\x00\x00\x00\x00\x00", 8));
  EXPECT_NE(m.find("holds 3 bytes"), std::string::npos) << m;
}

// A file another program holds open for writing: HDF5's reason and what to do about it.
TEST(H5, ALockedFileSaysWhoAndHowToTurnLockingOff) {
  test::TempDir dir;
  const auto path = dir / "held.h5";
  { auto file = File::create(path); }
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const auto message = test::error_of([&] { File::open(path, true); });
  ::close(fd);
  EXPECT_NE(message.find("unable to lock file"), std::string::npos) << message;
  EXPECT_NE(message.find("HDF5_USE_FILE_LOCKING=FALSE"), std::string::npos) << message;
}

// What the HDF5 library does to a crafted file in the child cannot reach the caller: a crash
// (here a real SIGSEGV, and an abort) is one Error naming the file; an Error thrown in the
// child is thrown as it was; a child that reads without failing lets the caller go on.
TEST(H5, ReadInChildTurnsACrashIntoAnErrorAndPassesErrorsOn) {
  auto crash = test::error_of([] {
    read_in_child("crafted.h5", [] {
      volatile int* nowhere = nullptr;
      *nowhere = 1;
    });
  });
  EXPECT_NE(crash.find("crafted.h5"), std::string::npos) << crash;
  EXPECT_NE(crash.find("corrupt HDF5 file: reading it crashed the HDF5 library"),
            std::string::npos)
      << crash;
  crash = test::error_of([] { read_in_child("x.h5", [] { std::abort(); }); });
  EXPECT_NE(crash.find("crashed the HDF5 library (signal 6"), std::string::npos) << crash;
  try {
    read_in_child("x.h5", [] { throw Error("x.h5:/a", "no such attribute"); });
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.subject(), "x.h5:/a");
    EXPECT_EQ(e.message(), "no such attribute");
  }
  int here = 0;
  EXPECT_NO_THROW(read_in_child("x.h5", [&] { here = 1; }));
  EXPECT_EQ(here, 0) << "the child's memory is its own";
}

// A fork while another thread runs can hang the child on a lock that thread held (GCC 12's
// ASan allocator did in CI): read_in_child refuses while a thread of attnscope/threads.h
// runs, and forks again once it has finished.
TEST(H5, ReadInChildRefusesWhileAWorkerThreadRuns) {
  std::promise<void> release;
  auto released = release.get_future().share();
  auto worker = start_thread([released] { released.wait(); });
  EXPECT_EQ(running_threads(), 1);
  const auto refused = test::error_of([] { read_in_child("x.h5", [] {}); });
  EXPECT_NE(refused.find("x.h5"), std::string::npos) << refused;
  EXPECT_NE(refused.find("1 worker thread(s) run"), std::string::npos) << refused;
  release.set_value();
  worker.join();
  EXPECT_EQ(running_threads(), 0);
  EXPECT_NO_THROW(read_in_child("x.h5", [] {}));
  // start_async is counted until its function has returned; get() joins its thread.
  auto value = start_async([] { return 7; });
  EXPECT_EQ(value.get(), 7);
  EXPECT_EQ(running_threads(), 0);
}

}  // namespace
}  // namespace attnscope::pipeline::h5
