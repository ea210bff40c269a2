#!/usr/bin/env bash
# One idempotent set-up step for linrec's development and CI machines (Debian 12 / Ubuntu):
#   - LLVM/MLIR 22 (melior links it; the MLIR tools check our IR), lld-22 (AMD code objects),
#     libclang (bindgen for mlir-sys), spirv-tools (spirv-val), libze1 (the Level Zero loader:
#     its zeInit failure path is tested here; Intel GPUs need their driver too);
#   - ptxas from PyPI (nvidia-cuda-nvcc, CUDA 13.0 to match the GPU machines' driver);
#   - Intel's CPU OpenCL runtime (scripts/setup-opencl.sh), which executes our SPIR-V in tests.
# Safe to run any number of times: it installs only what is missing.
# With --print-env it prints `export ...` lines for the tools (for `eval`); logs go to stderr.
set -euo pipefail

APT_PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools libpolly-22-dev lld-22 libzstd-dev
  libz3-dev libxml2-dev libclang-dev spirv-tools libze1)
NVCC_WHEEL="nvidia-cuda-nvcc==13.0.88"

log() { echo "[setup] $*" >&2; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
else
  log "Debian packages present (LLVM/MLIR $(llvm-config-22 --version))"
fi

ptxas_path() {
  # The wheel puts ptxas under nvidia/cu13/bin (CUDA 13) or nvidia/cuda_nvcc/bin (CUDA 12).
  python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for root in roots:
    for p in glob.glob(os.path.join(root, "nvidia", "*", "bin", "ptxas")):
        print(p)
        raise SystemExit
PY
}

if [ -z "$(ptxas_path)" ]; then
  log "installing ptxas ($NVCC_WHEEL from PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "$NVCC_WHEEL" >&2
fi
PTXAS="$(ptxas_path)"
if [ -z "$PTXAS" ]; then
  log "ptxas not found after installing $NVCC_WHEEL"
  exit 1
fi
chmod +x "$PTXAS" 2>/dev/null || true
log "ptxas: $PTXAS"

OCL_ENV="$(bash "$(dirname "$0")/setup-opencl.sh" --print-env)"

if [ "${1:-}" = "--print-env" ]; then
  echo "$OCL_ENV"
  echo "export LINREC_PTXAS=\"$PTXAS\""
  echo "export PATH=\"$(dirname "$PTXAS"):/usr/lib/llvm-22/bin:\$PATH\""
fi
