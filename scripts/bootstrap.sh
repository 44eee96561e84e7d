#!/usr/bin/env bash
# Installs every Debian 12 package attnscope needs to build, test and run — only what is
# missing — then checks that LibTorch will use OpenBLAS. Idempotent; quiet when all is present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache git pkg-config
  libtorch-dev libopencv-dev libjpeg-dev zlib1g-dev libdeflate-dev libpng-dev libboost-program-options-dev libhdf5-dev hdf5-tools
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libgloo-dev
  libopenblas0-pthread
  python3-torch python3-torchvision python3-h5py python3-opencv python3-numpy python3-sklearn
  clang-format chromium fonts-dejavu-core
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "bootstrap: installing ${#missing[@]} missing package(s): ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "bootstrap: not root and no sudo; install as root: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# LibTorch links libblas.so.3; with the reference BLAS behind it matrix products are about
# 30x slower (measured 6 vs 180 GFLOP/s on a 2-core machine).
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
blas=$(readlink -f "/usr/lib/$arch/libblas.so.3" 2>/dev/null || true)
if [[ "$blas" != *openblas* ]]; then
  cat >&2 <<MSG
bootstrap: libblas.so.3 resolves to '${blas:-nothing}', not OpenBLAS.
  LibTorch's matrix products would use the reference BLAS, about 30x slower.
  Fix it (as root): update-alternatives --set libblas.so.3-$arch /usr/lib/$arch/openblas-pthread/libblas.so.3
MSG
  exit 1
fi
