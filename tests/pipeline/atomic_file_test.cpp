#include "attnscope/atomic_file.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("attnscope_atomic_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::size_t entries() const {
    return static_cast<std::size_t>(std::distance(fs::directory_iterator(dir_), {}));
  }
  fs::path dir_;
};

TEST_F(AtomicFileTest, CommitReplacesTheTargetAndLeavesNoTemporaryFile) {
  const auto target = dir_ / "out.txt";
  write_file_atomically(target.string(), "old");
  {
    AtomicFile out(target.string());
    out.write("new ");
    out.write(std::string(100000, 'x'));
    EXPECT_EQ(test::read_text(target), "old");  // not visible before commit
    out.commit();
  }
  EXPECT_EQ(test::read_text(target), "new " + std::string(100000, 'x'));
  EXPECT_EQ(entries(), 1u);
}

TEST_F(AtomicFileTest, WithoutCommitTheTargetIsUntouchedAndTheTemporaryFileRemoved) {
  const auto target = dir_ / "keep.csv";
  write_file_atomically(target.string(), "good");
  try {
    AtomicFile out(target.string());
    out.write("half");
    throw std::runtime_error("failure in the middle");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(test::read_text(target), "good");
  EXPECT_EQ(entries(), 1u);
}

// A temporary written by path (HDF5) that another program removed before the commit (another
// run's remove_dead_temporaries that could not see this process): the commit fails naming it,
// and the target keeps its contents (an empty file was renamed over it). Never written by path,
// a commit still makes an empty file.
TEST_F(AtomicFileTest, ACommitWhoseTemporaryIsGoneFailsAndKeepsTheTarget) {
  const auto target = (dir_ / "c.h5").string();
  std::ofstream(target) << "good";
  {
    AtomicFile out(target);
    std::ofstream(out.temp_path()) << "new";
    fs::remove(out.temp_path());
    const auto message = test::error_of([&] { out.commit(); });
    EXPECT_NE(
        message.find("is gone (removed by another program?); " + target + " was not replaced"),
        std::string::npos)
        << message;
  }
  EXPECT_EQ(test::read_text(target), "good");
  const auto empty = (dir_ / "empty.txt").string();
  AtomicFile out(empty);
  out.commit();
  EXPECT_EQ(test::read_text(empty), "");
}

TEST_F(AtomicFileTest, TemporaryNameKeepsTheExtensionForWritersThatChooseFormatByIt) {
  AtomicFile out((dir_ / "a.png").string());
  EXPECT_EQ(fs::path(out.temp_path()).extension(), ".png");
  EXPECT_EQ(fs::path(out.temp_path()).parent_path(), dir_);
}

// A name of up to NAME_MAX bytes can be written: the temporary's name is cut to fit (its added
// bytes made "File name too long"), at a UTF-8 character boundary, keeping the extension.
TEST_F(AtomicFileTest, NamesNearNameMaxCanBeWritten) {
  std::string accented;
  for (int i = 0; i < 125; ++i)
    accented += "\xC3\xA9";  // é, 2 bytes
  for (const auto& name : {std::string(251, 'n') + ".png", accented + ".png"}) {
    const auto target = dir_ / name;
    {
      AtomicFile out(target.string());
      const auto temp = fs::path(out.temp_path()).filename().string();
      EXPECT_LE(temp.size(), 255u);
      EXPECT_EQ(fs::path(temp).extension(), ".png");
      EXPECT_EQ(temp.find("\xC3."), std::string::npos) << "a character cut in two";
      out.write("data");
      out.commit();
    }
    EXPECT_EQ(test::read_text(target), "data") << name.size();
  }
  EXPECT_EQ(entries(), 2u);
}

// What a SIGKILLed writer leaves is found under every name AtomicFile gives its temporaries,
// also a name cut near NAME_MAX and an extension it does not keep: removed once its process is
// gone and it was not written for 10 minutes, and not before. Another file's temporaries and
// the target stay.
TEST_F(AtomicFileTest, DeadTemporariesAreFoundAlsoUnderCutNames) {
  std::string accented;
  for (int i = 0; i < 125; ++i)
    accented += "\xC3\xA9";  // é, 2 bytes
  for (const auto& name : {std::string("c.h5"), std::string(251, 'n') + ".h5", accented + ".h5",
                           "x." + std::string(40, 'e')}) {
    const auto target = dir_ / name;
    std::ofstream(target) << "old";
    std::ofstream(dir_ / ".other.h5.1-0.tmp.h5") << "x";
    // A writer killed after writing its temporary: a child that never runs the destructor.
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      AtomicFile out(target.string());
      std::ofstream(out.temp_path()) << "new";
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_EQ(entries(), 3u) << name.size();
    EXPECT_EQ(remove_dead_temporaries(target.string()), 0) << "written just now";
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path() != target)
        fs::last_write_time(e.path(), fs::file_time_type::clock::now() - std::chrono::minutes(11));
    EXPECT_EQ(remove_dead_temporaries(target.string()), 1) << name.size();
    EXPECT_EQ(entries(), 2u) << name.size();
    EXPECT_EQ(test::read_text(target), "old");
    fs::remove(target);
    fs::remove(dir_ / ".other.h5.1-0.tmp.h5");
  }
}

// The one-pass form for a folder of outputs finds the temporaries of every name the command
// writes, also names that hold ".tmp" or have no extension, and long names that stand cut in
// their temporary's name (named apart, as preprocess's up to 255 bytes), and no other file's;
// a live process's and a recent one stay.
TEST_F(AtomicFileTest, DeadTemporariesOfAFolderOfOutputsAreFoundInOnePass) {
  std::string accented;
  for (int i = 0; i < 124; ++i)
    accented += "\xC3\xA9";  // é, 2 bytes
  const std::vector<std::string> long_outputs{std::string(251, 'n') + ".png", accented + ".png",
                                              std::string(210, 'm') + ".png"};
  std::vector<std::string> outputs{"000001.png", "a.tmp", "a.tmp.png", "labels", "x.y.z"};
  outputs.insert(outputs.end(), long_outputs.begin(), long_outputs.end());
  // Long names that share a long output's first 210 bytes, one under another extension and one
  // without: not outputs.
  const std::vector<std::string> others{"000002.png", "b.tmp", std::string(251, 'n') + ".jpg",
                                        std::string(210, 'm')};
  std::vector<std::string> all = outputs;
  all.insert(all.end(), others.begin(), others.end());
  // Each name's temporary, as the writer named it (kept outside the folder swept).
  const test::TempDir listing;
  const auto temporaries = listing / "temporaries.txt";
  const pid_t pid = ::fork();  // writers killed after writing their temporaries
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::deque<AtomicFile> writers;  // alive at _exit: no destructor removes their files
    std::ofstream list(temporaries);
    for (const auto& name : all) {
      const auto temp = writers.emplace_back((dir_ / name).string()).temp_path();
      std::ofstream(temp) << "new";
      list << fs::path(temp).filename().string() << "\n";
    }
    list.close();
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_EQ(entries(), all.size());
  std::vector<std::string> temporary_of;  // in the order of `all`
  {
    std::ifstream in(temporaries);
    for (std::string line; std::getline(in, line);)
      temporary_of.push_back(line);
  }
  ASSERT_EQ(temporary_of.size(), all.size());
  std::ofstream(dir_ / "000001.png") << "old";  // an output and unrelated dot files stay
  std::ofstream(dir_ / ".hidden") << "x";
  std::ofstream(dir_ / ".000001.png.1x-0.tmp.png") << "x";
  const auto is_output = [&](const std::string& name) {
    return name.size() < 200 && std::find(outputs.begin(), outputs.end(), name) != outputs.end();
  };
  EXPECT_EQ(remove_dead_temporaries_in(dir_.string(), is_output, long_outputs), 0)
      << "written just now";
  for (const auto& e : fs::directory_iterator(dir_))
    fs::last_write_time(e.path(), fs::file_time_type::clock::now() - std::chrono::minutes(11));
  const auto live = dir_ / (".labels." + std::to_string(::getpid()) + "-9.tmp");
  std::ofstream(live) << "x";
  fs::last_write_time(live, fs::file_time_type::clock::now() - std::chrono::minutes(11));
  EXPECT_EQ(remove_dead_temporaries_in(dir_.string(), is_output, long_outputs),
            static_cast<int>(outputs.size()));
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(dir_))
    left.insert(e.path().filename().string());
  EXPECT_EQ(left.size(), others.size() + 4) << "the others' temporaries, 000001.png, .hidden, "
                                               "a malformed name and a live process's";
  EXPECT_TRUE(left.count("000001.png") && left.count(".hidden") && left.count(live.filename()));
  for (std::size_t i = 0; i < all.size(); ++i)
    EXPECT_EQ(left.count(temporary_of[i]), i < outputs.size() ? 0u : 1u)
        << all[i] << (i < outputs.size() ? "'s temporary stayed" : "'s temporary was removed");
}

TEST_F(AtomicFileTest, RefusesToReplaceSomethingThatIsNotARegularFile) {
  EXPECT_THROW(AtomicFile("/dev/full"), Error);
  EXPECT_THROW(AtomicFile(dir_.string()), Error);
}

// A write past the file-size limit (a full disk as the process sees it) throws an Error
// naming the target, and the previous contents survive. Run in a child: the limit is per
// process.
TEST_F(AtomicFileTest, WriteFailureUnderAFileSizeLimitThrowsAndKeepsThePreviousFile) {
  const auto target = dir_ / "big.bin";
  write_file_atomically(target.string(), "previous");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{4096, 4096};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    try {
      AtomicFile out(target.string());
      out.write(std::string(1 << 20, 'x'));
      out.commit();
    } catch (const Error& e) {
      const std::string what = e.what();
      _exit(what.find("big.bin") != std::string::npos ? 0 : 3);
    }
    _exit(2);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: no error was thrown; 3: the error did not name the file";
  EXPECT_EQ(test::read_text(target), "previous");
  EXPECT_EQ(entries(), 1u);
}

// The fault helpers every command's fault tests use: a file-size limit fails writes as a full
// disk does, and a kill ends the whole process group.
TEST_F(AtomicFileTest, FaultHelpersLimitFileSizeAndKill) {
  const auto file = dir_ / "zeros";
  const auto limited =
      test::run_with_file_size_limit("head -c 100000 /dev/zero > " + file.string(), 1000);
  EXPECT_NE(limited.status, 0);
  EXPECT_EQ(fs::file_size(file), 1000u);
  const auto killed = test::run_killed_after("sleep 20", 100);
  EXPECT_TRUE(killed.killed);
  EXPECT_EQ(killed.signal, SIGKILL);
  const auto quick = test::run_killed_after("echo done", 20000);
  EXPECT_FALSE(quick.killed);
  EXPECT_EQ(quick.status, 0);
  EXPECT_EQ(quick.output, "done\n");
}

// A signal that ends the process runs no destructor: with remove_temporaries_on_signals() the
// live temporary files go with it (report and merge left 23-33 MB ones behind on SIGTERM), the
// process still ends by that signal, and the target keeps its old contents. A signal the parent
// ignores (nohup) stays ignored: the child then finishes and commits.
TEST_F(AtomicFileTest, ASignalThatEndsTheProcessRemovesItsLiveTemporaryFiles) {
  const auto target = (dir_ / "report.html").string();
  for (const int sig : {SIGTERM, SIGINT, SIGHUP, 0}) {
    SCOPED_TRACE(sig);
    { std::ofstream(target) << "old"; }
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int raised = sig == 0 ? SIGTERM : sig;
      // Whatever the test runs under (nohup, a background job ignores SIGINT), then one ignored
      // signal as under nohup.
      for (const int s : {SIGTERM, SIGINT, SIGHUP})
        ::signal(s, SIG_DFL);
      if (sig == 0) ::signal(SIGTERM, SIG_IGN);
      remove_temporaries_on_signals();
      AtomicFile first(target), second((dir_ / "other.txt").string());
      first.write("new contents");
      second.write("x");
      {
        AtomicFile done((dir_ / "done.txt").string());
        done.write("y");
        done.commit();
      }
      // A forked child (HDF5's isolation checks) inherits the handlers and the registry: a
      // signal that ends it must not remove its parent's files (the commit below would fail).
      const pid_t child = ::fork();
      if (child == 0) {
        ::raise(SIGHUP);
        ::_exit(3);
      }
      ::waitpid(child, nullptr, 0);
      ::raise(raised);
      first.commit();
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      names.insert(e.path().filename().string());
    if (sig == 0) {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
      EXPECT_EQ(test::read_text(target), "new contents");
      // "other.txt"'s temporary: its destructor never ran (_exit), as after SIGKILL.
      EXPECT_EQ(names.size(), 3u);
    } else {
      ASSERT_TRUE(WIFSIGNALED(status)) << status;
      EXPECT_EQ(WTERMSIG(status), sig);
      EXPECT_EQ(test::read_text(target), "old");
      EXPECT_EQ(names, (std::set<std::string>{"done.txt", "report.html"}));
    }
    for (const auto& name : names)
      fs::remove(dir_ / name);
  }
}

}  // namespace
}  // namespace attnscope
