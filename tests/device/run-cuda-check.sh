#!/bin/sh
# Builds tests/device/cuda_check.cpp with the model code and the training primitives it checks
# (models/, pipeline/training, the image losses, mixing and TTA, runtime/precision) against the
# LibTorch of python3's torch package, a CUDA build, and runs it: every model and primitive on
# the GPU against the same computation on the CPU (see the program's header).
#
#   tests/device/run-cuda-check.sh [OUT_DIR] [DEVICE]
#
# OUT_DIR (default /tmp/cuda-check) receives the objects, the program and build.log / check.log;
# DEVICE (default cuda) is passed to the program (`cpu` checks the program itself on a machine
# without a GPU). It needs g++, python3 with torch, and nlohmann/json.hpp: under /usr/include,
# or in the folder NLOHMANN_INCLUDE names. TORCH_CXXFLAGS and TORCH_LDFLAGS replace what is
# read from python3's torch (Debian's LibTorch: TORCH_CXXFLAGS='-I/usr/include/torch/csrc/api/include'
# TORCH_LDFLAGS='-ltorch -ltorch_cpu -lc10'). Exit status: the program's, or 2 when it did not build.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/tmp/cuda-check}
device=${2:-cuda}
mkdir -p "$out/obj"
log="$out/build.log"
: > "$log"
py=${PYTHON:-python3}

if [ -z "${TORCH_CXXFLAGS:-}" ]; then
  tdir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))') || exit 2
  abi=$("$py" -c 'import torch; print(int(torch.compiled_with_cxx11_abi()))') || exit 2
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$log"
  TORCH_CXXFLAGS="-D_GLIBCXX_USE_CXX11_ABI=$abi -isystem $tdir/include -isystem $tdir/include/torch/csrc/api/include"
  cuda_libs=""
  [ -e "$tdir/lib/libtorch_cuda.so" ] && cuda_libs="-ltorch_cuda -lc10_cuda"
  # --no-as-needed: libtorch_cuda registers the CUDA kernels when loaded; nothing names it.
  TORCH_LDFLAGS="-L$tdir/lib -Wl,-rpath,$tdir/lib -Wl,--no-as-needed $cuda_libs -ltorch -ltorch_cpu -lc10 -Wl,--as-needed"
fi
json=${NLOHMANN_INCLUDE:-/usr/include}
[ -e "$json/nlohmann/json.hpp" ] || { echo "no nlohmann/json.hpp under $json" | tee -a "$log"; exit 2; }

# The C++ standard: 17 as the project's build, 20 when these torch headers need it.
std=c++17
if ! printf '#include <torch/torch.h>\nint main() {}\n' |
    g++ -std=$std $TORCH_CXXFLAGS -fsyntax-only -x c++ - >> "$log" 2>&1; then
  std=c++20
  echo "torch's headers need more than C++17: building with -std=$std" >> "$log"
fi
flags="-std=$std -O1 -g0 -fPIC -w $TORCH_CXXFLAGS -I$root -I$root/common"
# /usr/include is searched already; naming it again would break libstdc++'s #include_next.
[ "$json" = /usr/include ] || flags="$flags -isystem $json"

sources=$(cd "$root" && ls models/*/*.cpp pipeline/training.cpp pipeline/optimizer_kernels.cpp \
  pipeline/vision/image_losses.cpp pipeline/vision/mixing.cpp pipeline/vision/tta.cpp \
  runtime/precision.cpp)
jobs=$(nproc 2>/dev/null || echo 2)
# Each source to its object; the list of failures in $out/failed.
: > "$out/failed"
export root out flags
echo "$sources" | xargs -P "$jobs" -I{} sh -c '
  o="$out/obj/$(echo {} | tr / _).o"
  extra=""
  [ {} = pipeline/optimizer_kernels.cpp ] && extra="-ffp-contract=off -fno-math-errno"
  if ! g++ $flags $extra -c "$root/{}" -o "$o" > "$o.log" 2>&1; then echo {} >> "$out/failed"; fi'
for f in $(cat "$out/failed"); do
  echo "== $f did not compile:" >> "$log"
  head -c 6000 "$out/obj/$(echo "$f" | tr / _).o.log" >> "$log"
done
defines=""
objects=""
for f in $sources; do
  grep -qx "$f" "$out/failed" && continue
  objects="$objects $out/obj/$(echo "$f" | tr / _).o"
done
if grep -qx runtime/precision.cpp "$out/failed"; then
  echo "runtime/precision.cpp did not build with this LibTorch: the bfloat16 checks are left out" >> "$log"
else
  defines="-DATTNSCOPE_CHECK_PRECISION"
fi
if ! g++ $flags $defines -c "$root/tests/device/cuda_check.cpp" -o "$out/obj/cuda_check.o" >> "$log" 2>&1 ||
   ! g++ -o "$out/cuda_check" "$out/obj/cuda_check.o" $objects $TORCH_LDFLAGS -lpthread >> "$log" 2>&1; then
  echo "cuda_check did not build (build.log)" | tee -a "$log"
  tail -c 3000 "$log"
  exit 2
fi
"$out/cuda_check" "$device" 2>&1 | tee "$out/check.log"
exit "$(tail -n 1 "$out/check.log" | grep -q '^PASSED' && echo 0 || echo 1)"
