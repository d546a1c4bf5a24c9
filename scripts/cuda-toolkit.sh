#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain from PyPI, for building `--features cuda` on a machine
# with no GPU and no system CUDA (a laptop, CI). A machine with a CUDA toolkit installed does not
# need this: point CUDA_HOME at it instead.
#
#   scripts/cuda-toolkit.sh [PREFIX]        # default PREFIX: ~/.cache/emilio/cuda-13.0
#   eval "$(scripts/cuda-toolkit.sh --env [PREFIX])"
#   cargo build --release --features cuda
#
#   scripts/cuda-toolkit.sh --compiler-only [PREFIX]
#     only nvcc and the headers (about 100 MB): enough for kernels/check/tests/cuda_source.rs,
#     which CI runs; not for `--features cuda`, which links Candle's CUDA libraries.
#
# What it installs (NVIDIA's own wheels, about 1.2 GB): nvcc, ptxas, cicc and the headers
# (nvidia-cuda-nvcc, -nvvm, -crt, -cccl, -runtime), and the libraries Candle's CUDA backend links
# (cuBLAS, cuRAND, NVRTC, the CUDA runtime). The driver library libcuda.so comes with the GPU
# driver, not with a toolkit; a machine without one gets a link-time stub here, exactly what the
# toolkit's own lib64/stubs/libcuda.so is: every cu* entry point of cuda.h, each an empty
# function, under the driver's soname (libcuda.so.1). Binaries built against it load the real
# driver wherever they run on a GPU, and do not start where there is none.
#
# CUDA_COMPUTE_CAP picks the GPU architecture the kernels are compiled for (Candle's kernels and
# emilio's both read it; nvidia-smi is asked when it is unset, which fails without a GPU). The
# printed environment sets 90 (Hopper: H100, H200) unless it is already set.
set -euo pipefail

print_env=0
compiler_only=0
case "${1:-}" in
  --env) print_env=1; shift ;;
  --compiler-only) compiler_only=1; shift ;;
esac
prefix="${1:-${EMILIO_CUDA_HOME:-$HOME/.cache/emilio/cuda-13.0}}"
root="$prefix/nvidia/cu13"

if [[ $print_env == 1 ]]; then
  echo "export CUDA_HOME='$root'"
  echo "export PATH='$root/bin':\"\$PATH\""
  echo "export LIBRARY_PATH='$root/lib64':\"\${LIBRARY_PATH:-}\""
  echo "export LD_LIBRARY_PATH='$root/lib':\"\${LD_LIBRARY_PATH:-}\""
  echo "export CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
  exit 0
fi

compiler=("nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*")
libraries=("nvidia-cuda-nvrtc==13.0.*" "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*")
wanted=()
[[ -x "$root/bin/nvcc" ]] || wanted+=("${compiler[@]}")
[[ $compiler_only == 1 || -e "$root/lib/libcublas.so.13" ]] || wanted+=("${libraries[@]}")
if [[ ${#wanted[@]} -gt 0 ]]; then
  # One pip call per set: pip --target does not merge into an existing nvidia/ tree, so a
  # later call installs into a scratch prefix and its files are copied over.
  scratch="$(mktemp -d)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$scratch" "${wanted[@]}"
  mkdir -p "$prefix"
  cp -a "$scratch/." "$prefix/"
  rm -rf "$scratch"
fi

# The linker looks for lib<name>.so; the wheels ship only the versioned sonames. lib64/ holds
# the unversioned names the link needs, and the driver stub.
mkdir -p "$root/lib64"
for lib in "$root"/lib/lib*.so.*; do
  name="$(basename "$lib")"
  ln -sf "../lib/$name" "$root/lib64/${name%%.so.*}.so"
done
if [[ $compiler_only == 0 && ! -e "$root/lib64/libcuda.so" ]]; then
  stub_c="$(mktemp --suffix .c)"
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' "$root/include/cuda.h" | sort -u |
    sed 's/.*/void &(void) {}/' >"$stub_c"
  "${CC:-cc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib64/libcuda.so" "$stub_c"
  rm -f "$stub_c"
fi
"$root/bin/nvcc" --version | tail -n 2
echo "CUDA toolkit ready in $root; load it with: eval \"\$($0 --env $prefix)\""
