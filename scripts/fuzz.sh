#!/usr/bin/env bash
# libFuzzer (Debian's clang) on one attnscope parser:
#   ./scripts/fuzz.sh TARGET SECONDS        TARGET: csv | image | pipeline_json | tsv | checkpoint
# Builds build-fuzz/fuzz_TARGET from tests/fuzz/fuzz_TARGET.cpp and the library sources it needs
# (compiled with -fsanitize=fuzzer,address,undefined; no CMake, no PCH), then fuzzes for SECONDS
# seconds starting from tests/fuzz/corpus/TARGET/. New interesting inputs go to
# build-fuzz/corpus-TARGET/ (copy the small ones worth keeping into the corpus: every corpus
# file is replayed by the FuzzCorpus* regression tests of the normal suite). A crash leaves
# crash-* in build-fuzz/ and the script fails. Run it at low priority on a shared machine:
#   nice -n 19 ./scripts/fuzz.sh csv 600
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz.sh TARGET SECONDS}
seconds=${2:?usage: fuzz.sh TARGET SECONDS}
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2; exit 1; }

case "$target" in
  csv) sources=(datasets/csv.cpp); libs=() ;;
  image) sources=(preprocessing/decode.cpp)
         libs=(-lopencv_imgcodecs -lopencv_imgproc -lopencv_core -ljpeg -lpng16 -lz) ;;
  pipeline_json) sources=(preprocessing/pipeline.cpp preprocessing/steps.cpp preprocessing/inpaint.cpp
                          preprocessing/augment.cpp preprocessing/decode.cpp
                          preprocessing/tensor.cpp)
                 libs=(-lopencv_imgcodecs -lopencv_imgproc -lopencv_photo -lopencv_core -ljpeg -lpng16 -lz
                       -ltorch -ltorch_cpu -lc10) ;;
  tsv) sources=(datasets/text/pairs.cpp datasets/text/tokenizer.cpp)
       libs=(-ltorch -ltorch_cpu -lc10) ;;
  checkpoint) sources=(pipeline/checkpoint.cpp pipeline/h5.cpp pipeline/h5_strings.cpp
                      pipeline/h5_isolation.cpp)
              libs=(-L/usr/lib/x86_64-linux-gnu/hdf5/serial -lhdf5 -ltorch -ltorch_cpu -lc10) ;;
  *) echo "fuzz.sh: unknown target '$target'" >&2; exit 2 ;;
esac

out=build-fuzz
mkdir -p "$out/generated/attnscope" "$out/corpus-$target"
# version.h as common/CMakeLists.txt generates it.
version=$(sed -n 's/^project(attnscope VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
IFS=. read -r major minor patch <<<"${version:-0.0.0}"
sed -e "s/@PROJECT_VERSION@/$version/" -e "s/@PROJECT_VERSION_MAJOR@/$major/" \
    -e "s/@PROJECT_VERSION_MINOR@/$minor/" -e "s/@PROJECT_VERSION_PATCH@/$patch/" \
    common/version.h.in > "$out/generated/attnscope/version.h"

flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -DATTNSCOPE_FUZZING
       -I. -Icommon -Itests -I"$out/generated" -isystem /usr/include/opencv4
       -isystem /usr/include/torch/csrc/api/include -isystem /usr/include/hdf5/serial
       -DATTNSCOPE_SOURCE_DIR="\"$(pwd)\"" -D_GLIBCXX_USE_CXX11_ABI=1)
binary="$out/fuzz_$target"
newest=$(ls -t "tests/fuzz/fuzz_$target.cpp" tests/fuzz/*.h "${sources[@]}" | head -1)
if [[ ! -x $binary || $newest -nt $binary ]]; then
  echo "fuzz.sh: building $binary"
  clang++ "${flags[@]}" "tests/fuzz/fuzz_$target.cpp" "${sources[@]}" "${libs[@]}" -lpthread \
    -o "$binary"
fi

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$(pwd)/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$(pwd)/tests/sanitizers/ubsan.supp"
start=$(date +%s)
status=0
# FUZZ_FLAGS: more libFuzzer flags, e.g. "-fork=1 -ignore_crashes=1" to go on past crashes
# (each saved as crash-*), as the checkpoint target needs: HDF5 1.10.8 itself crashes on
# crafted files, which attnscope survives by reading them in a child process first.
(cd "$out" && "./fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
   -max_len=65536 -print_final_stats=1 ${FUZZ_FLAGS:-} "corpus-$target" \
   "../tests/fuzz/corpus/$target") || status=$?
echo "fuzz.sh: $target ran $(($(date +%s) - start)) s, exit $status"
exit $status
