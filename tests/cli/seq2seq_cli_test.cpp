// End-to-end tests of `attnscope seq2seq train|evaluate|translate`.

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "test_support.h"

namespace attnscope {
namespace {

std::string exe() {
  return std::string(ATTNSCOPE_EXE) + " --threads 1";
}

// A tiny, briefly trained model: enough for the command's plumbing, not for accuracy (learning
// is asserted in tests/pipeline/text/seq2seq_test.cpp).
std::string train_tiny(const test::TempDir& dir, const std::string& model) {
  const auto r = test::run_process(
      exe() + " seq2seq train --task copy --model " + model +
      " --count 300 --min-length 3 --max-length 6 --epochs 1 --hidden-dim 16 --embedding-dim 8"
      " --model-dim 16 --heads 2 --ff-dim 16 --valid-size 20 --quiet --out " +
      (dir / "run"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("held-out 20 pairs: exact match"), std::string::npos) << r.output;
  return dir / "run/model.h5";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    lines.push_back(line);
  return lines;
}

TEST(Seq2SeqCli, TrainEvaluateAndTranslate) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "gru-additive");
  ASSERT_TRUE(std::filesystem::exists(model));
  // The oracle: `translate` gives the outputs; the metrics of `evaluate` on pairs whose targets
  // are known are then computed here from those outputs (exact match; token accuracy = equal
  // characters at the same position over the longer of output and target). Every second
  // target is the model's own output, so at least some pairs match whatever the model learnt
  // on this CPU.
  const std::vector<std::string> sources = {"abc", "hello", "cab", "bead", "face", "dd"};
  std::string args;
  for (const auto& s : sources)
    args += " " + s;
  auto r = test::run_process(exe() + " seq2seq translate --model " + model + args);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto outputs = lines_of(r.output);
  ASSERT_EQ(outputs.size(), sources.size()) << r.output;
  std::ofstream tsv(dir / "pairs.tsv");
  int64_t exact = 0, equal = 0, positions = 0;
  for (std::size_t i = 0; i < sources.size(); ++i) {
    ASSERT_EQ(outputs[i].find('<'), std::string::npos) << "special token in output: " << r.output;
    // (An empty output cannot be a target: the first non-empty one is taken then, whatever
    // its position, so that at least one pair matches.)
    const bool own = !outputs[i].empty() && (i % 2 == 0 || exact == 0);
    const auto& target = own ? outputs[i] : sources[i];
    tsv << sources[i] << "\t" << target << "\n";
    exact += outputs[i] == target;
    for (std::size_t k = 0; k < std::min(outputs[i].size(), target.size()); ++k)
      equal += outputs[i][k] == target[k];
    positions += static_cast<int64_t>(std::max(outputs[i].size(), target.size()));
  }
  tsv.close();
  ASSERT_GT(exact, 0) << "every output was empty: " << r.output;
  r = test::run_process(exe() + " seq2seq evaluate --model " + model +
                        " --task tsv:" + (dir / "pairs.tsv") + " --json");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto json = nlohmann::json::parse(r.output);
  const auto n = static_cast<double>(sources.size());
  EXPECT_DOUBLE_EQ(json["exact_match"].get<double>(), static_cast<double>(exact) / n) << r.output;
  EXPECT_DOUBLE_EQ(json["token_accuracy"].get<double>(),
                   static_cast<double>(equal) / static_cast<double>(positions))
      << r.output;
  const double bleu = json["bleu"].get<double>();
  EXPECT_TRUE(bleu >= 0.0 && bleu <= 100.0) << r.output;
  EXPECT_EQ(json["sentences"], 6);
  EXPECT_EQ(json["model"], "gru-additive");
  r = test::run_process(exe() + " seq2seq evaluate --model " + model +
                        " --task copy --count 30 --min-length 3 --max-length 6 --json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output)["sentences"], 30);
  r = test::run_process(exe() + " seq2seq evaluate --model " + model + " --task reverse");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("exact match"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("BLEU"), std::string::npos) << r.output;
  r = test::run_process(exe() + " seq2seq translate --model " + model + " --beam 3 --alignments " +
                        (dir / "al.h5") + " --alignment-png " + (dir / "png") + " abc hello");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 2) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "al.h5"));
  EXPECT_TRUE(std::filesystem::exists(dir / "png/000001.png"));
}

// SIGTERM ends training after the current batch: the model trained so far is saved (no
// held-out evaluation), translate loads it, and the exit status is 128 + SIGTERM.
TEST(Seq2SeqCli, SigtermSavesTheModelTrainedSoFar) {
  test::TempDir dir;
  test::SignalPlan plan;
  plan.after = {"epoch 1/200"};
  const auto r = test::run_signalled(
      "exec " + exe() +
          " seq2seq train --task copy --model gru-additive --count 300 --min-length 3"
          " --max-length 6 --epochs 200 --hidden-dim 16 --embedding-dim 8 --valid-size 20 --out " +
          (dir / "run") + " 2>&1",
      plan);
  ASSERT_EQ(r.signals_sent, 1) << r.output;
  EXPECT_EQ(r.signal, 0) << r.output;
  EXPECT_EQ(r.status, 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("stopped by SIGTERM after "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("held-out"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("epoch 200/200"), std::string::npos) << r.output;
  const auto t =
      test::run_process(exe() + " seq2seq translate --model " + (dir / "run/model.h5") + " abc");
  EXPECT_EQ(t.status, 0) << t.output;
}

// One run per folder (attnscope/folder_lock.h): while another run holds the folder (here
// util-linux's flock), seq2seq train stops at once and leaves the folder's model.h5 alone.
TEST(Seq2SeqCli, AFolderInUseByAnotherRunIsRefusedAndLeftAlone) {
  test::TempDir dir;
  if (!test::folders_lock(dir.path().string()))
    GTEST_SKIP() << "flock(2) on folders is not supported under " << dir.path();
  const auto run = dir / "run";
  std::filesystem::create_directories(run);
  // The other run's model (one it wrote before: seq2seq train replaces no other file).
  ASSERT_EQ(test::run_process(exe() +
                              " seq2seq train --task copy --count 50 --epochs 1 --quiet "
                              "--out " +
                              (dir / "other"))
                .status,
            0);
  std::filesystem::copy_file(dir / "other/model.h5", run + "/model.h5");
  const auto theirs = test::read_text(run + "/model.h5");
  const auto r = test::run_process(
      "flock -o " + run + " " + exe() +
      " seq2seq train --task copy --model gru-additive --count 300 --min-length 3"
      " --max-length 6 --epochs 1 --hidden-dim 16 --embedding-dim 8 --valid-size 20 --out " +
      run + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(run + ": is in use by another attnscope run"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("training "), std::string::npos) << r.output;
  EXPECT_EQ(test::file_names(run), std::set<std::string>{"model.h5"});
  EXPECT_TRUE(test::read_text(run + "/model.h5") == theirs);
  // Once the other run has gone, the same command trains and writes its model.
  const auto again = test::run_process(
      exe() +
      " seq2seq train --task copy --model gru-additive --count 300 --min-length 3"
      " --max-length 6 --epochs 1 --hidden-dim 16 --embedding-dim 8 --valid-size 20"
      " --quiet --out " +
      run + " 2>&1");
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_FALSE(test::read_text(run + "/model.h5") == theirs);
}

// A translation is one line whatever its tokens: a crafted vocabulary (re-sealed) whose every
// target token holds a newline or a terminal escape broke "one output line per input" and sent
// ESC to the terminal. Control characters are written as \n, \xNN.
TEST(Seq2SeqCli, TranslationsAreOneLineEachWhateverTheVocabulary) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "gru-additive");
  const auto script = dir / "craft.py";
  std::ofstream(script) << "import sys\nsys.path.insert(0, '" ATTNSCOPE_SOURCE_DIR
                           "/tests/python')\nfrom checkpoint_checksum import seal\n"
                        << R"(import json, h5py
with h5py.File(sys.argv[1], 'a') as f:
    e = json.loads(f.attrs['extra'])
    v = e['target_vocab']
    e['target_vocab'] = v[:4] + [('n\n%d', 'e\x1b[%dm', 'b\u202e%d')[i % 3] % i for i in range(4, len(v))]
    f.attrs['extra'] = json.dumps(e)
seal(sys.argv[1])
print('ok')
)";
  ASSERT_EQ(test::run_process(test::python() + " " + script + " " + model).output, "ok\n");
  const auto r = test::run_process(exe() + " seq2seq translate --model " + model +
                                   " --max-output-length 6 abc cba bca abcd dcba aabb 2>/dev/null");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(lines_of(r.output).size(), 6u) << r.output;
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("\xe2\x80\xae"), std::string::npos) << r.output;  // U+202E
  EXPECT_TRUE(r.output.find("\\n") != std::string::npos ||
              r.output.find("\\x1b[") != std::string::npos)
      << r.output;
}

// Weights past what float32 sums hold (a generator of 1e38, re-sealed: finite, so the checksum
// and NaN checks pass) made every score NaN, and argmax over NaN gave the same maximum-length
// string for every input, exit 0. Each input is now an error line naming the cause.
TEST(Seq2SeqCli, NonFiniteScoresAreAnErrorOfEachInputNotATranslation) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "transformer");
  const auto script = dir / "craft.py";
  std::ofstream(script) << "import sys\nsys.path.insert(0, '" ATTNSCOPE_SOURCE_DIR
                           "/tests/python')\nfrom checkpoint_checksum import seal\n"
                        << R"(import h5py, numpy as np
with h5py.File(sys.argv[1], 'a') as f:
    f['generator.weight'][...] = np.full(f['generator.weight'].shape, 1e38, np.float32)
seal(sys.argv[1])
print('ok')
)";
  ASSERT_EQ(test::run_process(test::python() + " " + script + " " + model).output, "ok\n");
  const auto r =
      test::run_process("(" + exe() + " seq2seq translate --model " + model + " abc cba >" +
                        (dir / "out.txt") + " 2>" + (dir / "err.txt") + ")");
  EXPECT_EQ(r.status, 1) << r.output;
  const auto err = test::read_text(dir / "err.txt");
  for (const char* n : {"1", "2"})
    EXPECT_NE(err.find(std::string("error: input ") + n +
                       ": the model's scores are not finite (NaN or inf): its weights are "
                       "damaged or overflow"),
              std::string::npos)
        << err;
  EXPECT_EQ(test::read_text(dir / "out.txt"), "\n\n") << "one empty line per failed input";
}

// A transformer has positions for --model-max-length tokens: a longer --max-output-length is a
// usage error naming both, before any sentence (it was "cannot decode more than 8 tokens" at
// the first long one, exit 1). An RNN decodes any length.
TEST(Seq2SeqCli, MaxOutputLengthBeyondATransformersPositionsIsAUsageError) {
  test::TempDir dir;
  const auto train = test::run_process(
      exe() + " seq2seq train --task reverse --model transformer --count 100 --epochs 1 " +
      "--max-length 6 --model-dim 16 --heads 2 --ff-dim 16 --layers 1 --valid-size 10 --quiet " +
      "--model-max-length 8 --out " + (dir / "t"));
  ASSERT_EQ(train.status, 0) << train.output;
  for (const char* verb : {"translate", "evaluate --task reverse --count 10"}) {
    const auto r = test::run_process(exe() + " seq2seq " + verb + " --model " + (dir / "t") +
                                     "/model.h5 --max-output-length 9 " +
                                     (std::string(verb) == "translate" ? "abc" : "") + " 2>&1");
    EXPECT_EQ(r.status, 2) << verb << ": " << r.output;
    EXPECT_EQ(r.output.rfind("error: --max-output-length 9 is above the 8 positions of this "
                             "transformer (its --model-max-length); give at most 8, or 0 for "
                             "that\n",
                             0),
              0u)
        << r.output;
    const auto ok = test::run_process(exe() + " seq2seq " + verb + " --model " + (dir / "t") +
                                      "/model.h5 --max-output-length 8 " +
                                      (std::string(verb) == "translate" ? "abc" : "") + " 2>&1");
    EXPECT_EQ(ok.status, 0) << verb << ": " << ok.output;
  }
}

TEST(Seq2SeqCli, TranslateReadsStdinAndReportsBadLinesByNumber) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "transformer");
  std::ofstream(dir / "in.txt") << "abc\n\xFF\xFE\n\ncab\naZZb\n";
  const auto r =
      test::run_process(exe() + " seq2seq translate --model " + model + " < " + (dir / "in.txt"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: input 2: invalid UTF-8 at byte 0"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("error: input 3: empty input"), std::string::npos) << r.output;
  // Upper-case letters are outside a copy-task model's vocabulary: said, not only read as <unk>.
  EXPECT_NE(r.output.find("warning: 1 of 5 inputs hold tokens outside the model's vocabulary (2 "
                          "in all, each read as <unk>), the first input 5\n"),
            std::string::npos)
      << r.output;
}

TEST(Seq2SeqCli, LongInputsAreTruncatedAndCounted) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "gru-dot");
  const auto r = test::run_process(exe() + " seq2seq translate --model " + model + " abc " +
                                   std::string(50, 'a'));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: 1 of 2 inputs truncated to the model's maximum of 32 tokens"),
            std::string::npos)
      << r.output;
}

TEST(Seq2SeqCli, FixedContextModelHasNoAlignments) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "gru");
  const auto r = test::run_process(exe() + " seq2seq translate --model " + model +
                                   " --alignments " + (dir / "al.h5") + " abc");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("has no attention (fixed context)"), std::string::npos) << r.output;
}

// translate's outputs are checked before the model is read (a model that does not exist is
// never reached): one path for both wrote the HDF5 file and then failed making the folder.
TEST(Seq2SeqCli, TranslateChecksItsOutputsFirst) {
  test::TempDir dir;
  std::ofstream(dir / "file.txt") << "x";
  const auto translate = exe() + " seq2seq translate --model /nonexistent/model.h5 ";
  auto r = test::run_process(translate + "--alignments " + (dir / "x") + " --alignment-png " +
                             (dir / "x") + " abc");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--alignments and --alignment-png must be different paths"),
            std::string::npos)
      << r.output;
  r = test::run_process(translate + "--alignment-png " + (dir / "file.txt") + " abc");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find((dir / "file.txt") + ": --alignment-png is a file; give a folder"),
            std::string::npos)
      << r.output;
  r = test::run_process(translate + "--alignments " + dir.path().string() + " abc");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--alignments is a folder; give a file"), std::string::npos) << r.output;
  EXPECT_EQ(test::file_names(dir.path()), std::set<std::string>{"file.txt"});
}

// train replaces only a model it wrote: OUT/model.h5 holding notes or an alignments file
// was replaced without a word.
TEST(Seq2SeqCli, TrainReplacesOnlyASeq2seqCheckpoint) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "gru-additive");
  const auto before = test::read_text(model);
  ASSERT_EQ(test::run_process(exe() + " seq2seq translate --model " + model + " --alignments " +
                              (dir / "al.h5") + " abc")
                .status,
            0);
  for (const auto& [folder, what] : std::vector<std::pair<std::string, std::string>>{
           {"notes", "notes\n"}, {"other", test::read_text(dir / "al.h5")}}) {
    std::filesystem::create_directories(dir / folder);
    if (folder == "notes")
      std::ofstream(dir / "notes/model.h5") << what;
    else
      std::filesystem::copy_file(dir / "al.h5", dir / "other/model.h5");
    const auto r = test::run_process(exe() +
                                     " seq2seq train --task copy --count 50 --epochs 1 "
                                     "--quiet --out " +
                                     (dir / folder));
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output, "error: " + (dir / folder) +
                            "/model.h5: exists and is not a checkpoint written by attnscope "
                            "seq2seq train; refusing to replace it (remove it first, or choose "
                            "another --out)\n");
    EXPECT_TRUE(test::read_text(dir / folder + "/model.h5") == what) << folder;
  }
  // One of its own that cannot be read is said so, with the reason (it was "not a checkpoint").
  std::filesystem::create_directories(dir / "damaged");
  std::filesystem::copy_file(model, dir / "damaged/model.h5");
  ASSERT_EQ(test::run_process(test::python() +
                              " -c \"import sys, h5py; f = h5py.File(sys.argv[1], 'r+')\n"
                              "d = [f[k] for k in f if isinstance(f[k], h5py.Dataset)][0]\n"
                              "a = d[...]; a.flat[0] += 1; d[...] = a\" " +
                              (dir / "damaged/model.h5"))
                .status,
            0);
  const auto damaged = test::run_process(exe() +
                                         " seq2seq train --task copy --count 50 "
                                         "--epochs 1 --quiet --out " +
                                         (dir / "damaged"));
  EXPECT_EQ(damaged.status, 1) << damaged.output;
  EXPECT_NE(damaged.output.find((dir / "damaged/model.h5") +
                                ": is an attnscope checkpoint that cannot be read (checksum "
                                "mismatch"),
            std::string::npos)
      << damaged.output;
  // Its own it replaces.
  const auto again = test::run_process(
      exe() + " seq2seq train --task copy --count 50 --epochs 1 --quiet --seed 9 --out " +
      (dir / "run"));
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_FALSE(test::read_text(model) == before);
}

// --alignments replaces an alignments file, nothing else: a checkpoint (the model itself
// under another name) or a CSV given by mistake was overwritten without a word.
TEST(Seq2SeqCli, AlignmentsReplaceOnlyAnAlignmentsFile) {
  test::TempDir dir;
  const auto model = train_tiny(dir, "gru-additive");
  std::filesystem::copy_file(model, dir / "precious.h5");
  std::ofstream(dir / "notes.csv") << "id,label\n";
  const auto translate = exe() + " seq2seq translate --model " + model + " --alignments ";
  for (const auto& name : {std::string("precious.h5"), std::string("notes.csv")}) {
    const auto before = test::read_text(dir / name);
    const auto r = test::run_process(translate + (dir / name) + " abc");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("error: " + (dir / name) +
                            ": exists and is not an alignments file written by attnscope seq2seq "
                            "translate; refusing to replace it"),
              std::string::npos)
        << r.output;
    EXPECT_TRUE(test::read_text(dir / name) == before) << name;
  }
  // Its own file it replaces (read back with h5py: the second sentence set).
  auto r = test::run_process(translate + (dir / "al.h5") + " abc");
  ASSERT_EQ(r.status, 0) << r.output;
  r = test::run_process(translate + (dir / "al.h5") + " ab cd");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto count = test::run_process(test::python() +
                                       " -c \"import h5py,sys; print(h5py.File(sys.argv[1],'r')"
                                       ".attrs['count'])\" " +
                                       (dir / "al.h5"));
  EXPECT_EQ(count.output, "2\n");

  // --alignment-png writes NNNNNN.png into a folder: a user's file under such a name is refused
  // before anything is written; the heatmaps of an earlier run are replaced.
  std::filesystem::create_directories(dir / "photos");
  std::ofstream(dir / "photos/000001.png", std::ios::binary) << "\x89PNG\r\n\x1a\na photo";
  const auto heatmaps = exe() + " seq2seq translate --model " + model + " --alignment-png ";
  r = test::run_process(heatmaps + (dir / "photos") + " abc hello");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + (dir / "photos/000001.png") +
                          ": exists and is not an alignment heatmap written by attnscope seq2seq "
                          "translate; refusing to replace it"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test::read_text(dir / "photos/000001.png"), "\x89PNG\r\n\x1a\na photo");
  EXPECT_FALSE(std::filesystem::exists(dir / "photos/000000.png"));
  for (const char* text : {" abc hello", " ab cd"}) {
    r = test::run_process(heatmaps + (dir / "png") + text);
    EXPECT_EQ(r.status, 0) << text << r.output;
  }
  // The chunk that marks them, read by Python's zlib: every chunk's CRC holds, the tEXt chunk
  // names the writer, and OpenCV decodes the image.
  const auto chunks = test::run_process(
      test::python() +
      " -c \"import sys, struct, zlib, cv2\n"
      "b = open(sys.argv[1], 'rb').read(); at = 8; text = []\n"
      "while at < len(b):\n"
      "  n, = struct.unpack('>I', b[at:at + 4]); kind = b[at + 4:at + 8]\n"
      "  assert zlib.crc32(b[at + 4:at + 8 + n]) == struct.unpack('>I', b[at + 8 + n:at + 12 + "
      "n])[0]\n"
      "  text += [b[at + 8:at + 8 + n]] if kind == b'tEXt' else []; at += 12 + n\n"
      "print(text, cv2.imread(sys.argv[1]).shape[2])\" " +
      (dir / "png/000001.png"));
  EXPECT_EQ(chunks.output, "[b'Software\\x00attnscope seq2seq translate'] 3\n") << chunks.output;
  // A heatmap that cannot be written is its sentence's line, and the others are written (one
  // too large to draw ended the run); an earlier run's heatmaps past this run's inputs go.
  r = test::run_process(heatmaps + (dir / "png") + " abc hello ab cd");
  ASSERT_EQ(r.status, 0) << r.output;
  std::filesystem::remove(dir / "png/000001.png");
  std::filesystem::create_directory(dir / "png/000001.png");
  std::filesystem::remove(dir / "png/000002.png");
  // A marked heatmap under a name translate never writes stays (0000009.png is not 000009.png).
  std::filesystem::copy_file(dir / "png/000003.png", dir / "png/0000009.png");
  r = test::run_process(heatmaps + (dir / "png") + " abc hello ab");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + (dir / "png/000001.png")), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("error: "), r.output.rfind("error: ")) << r.output;  // that one only
  EXPECT_EQ(test::file_names(dir / "png"),
            (std::set<std::string>{"000000.png", "000001.png", "000002.png", "0000009.png"}));
  EXPECT_TRUE(std::filesystem::is_directory(dir / "png/000001.png"));
  EXPECT_EQ(cv::imread(dir / "png/000002.png").channels(), 3);
}

// Sizes are said as the flags that set them, not as the checkpoint's fields; the other
// family's sizes, which change nothing, get one warning line.
TEST(Seq2SeqCli, SizesAreNamedByTheirFlags) {
  test::TempDir dir;
  const auto train = exe() + " seq2seq train --task copy --count 300 --epochs 1 --quiet --out " +
                     (dir / "run") + " ";
  auto r = test::run_process(train + "--layers 1000");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.output.rfind("error: --layers is 1000; expected an integer in [1, ", 0), 0u)
      << r.output;
  r = test::run_process(train + "--model transformer --model-dim 100000 --heads 1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.output.rfind("error: --model-dim is 100000; expected an integer in [1, ", 0), 0u)
      << r.output;
  r = test::run_process(train +
                        "--model gru-additive --hidden-dim 8 --embedding-dim 8 "
                        "--heads 2 --positions learned --valid-size 5 --tokenizer word");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: --heads, --positions: transformer sizes, which --model "
                          "gru-additive does not use\n"),
            std::string::npos)
      << r.output;
  // A synthetic task is tokenised by character whatever --tokenizer says: said in one line.
  EXPECT_NE(r.output.find("warning: --tokenizer word is for --task tsv:FILE; the synthetic task "
                          "'copy' is tokenised by character\n"),
            std::string::npos)
      << r.output;
}

TEST(Seq2SeqCli, TsvBadLinesAreReportedWithLineNumbers) {
  test::TempDir dir;
  std::ofstream tsv(dir / "pairs.tsv");
  tsv << "Go.\tVa !\tCC-BY\nno tab\n\nHi.\tSalut !\nRun!\tCours !\nWow!\tCa alors !\n"
         "Fire!\tAu feu !\nHelp!\tA l'aide !\nJump.\tSaute.\nStop!\tStop !\nWait!\tAttends !\n"
         "Bad\t\xC3\n";
  tsv.close();
  auto r = test::run_process(exe() + " seq2seq train --task tsv:" + (dir / "pairs.tsv") +
                             " --tokenizer word --epochs 1 --hidden-dim 8 --embedding-dim 8"
                             " --quiet --out " +
                             (dir / "run"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("--tokenizer word is for"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pairs.tsv:2: no tab"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pairs.tsv:3: empty line"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pairs.tsv:12: invalid UTF-8"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(3 lines skipped)"), std::string::npos) << r.output;
  std::ofstream(dir / "bad.tsv") << "only\nlines without tabs\n";
  r = test::run_process(exe() + " seq2seq train --task tsv:" + (dir / "bad.tsv") + " --out " +
                        (dir / "run2"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("no usable source<TAB>target lines"), std::string::npos) << r.output;
}

TEST(Seq2SeqCli, BadCommandLinesAreUsageErrors) {
  for (const std::string& args :
       {std::string("seq2seq"), std::string("seq2seq fly"),
        std::string("seq2seq train --task copy --model gru-magic --out /tmp/x"),
        std::string("seq2seq train --task sorting --out /tmp/x"),
        std::string("seq2seq train --task copy --epochs 0 --out /tmp/x"),
        std::string("seq2seq evaluate --task copy")}) {
    const auto r = test::run_process(exe() + " " + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << args << "\n" << r.output;
  }
  const auto r = test::run_process(exe() + " seq2seq translate --model /nonexistent/model.h5 x");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/model.h5"), std::string::npos) << r.output;
  const auto help = test::run_process(exe() + " seq2seq train --help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.output.find("--time-budget"), std::string::npos) << help.output;
}

}  // namespace
}  // namespace attnscope
