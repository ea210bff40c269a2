#!/usr/bin/env bash
# Installs Intel's CPU OpenCL runtime, which executes our SPIR-V kernels on a GPU-less machine
# (linrec-runtime's OpenCL backend loads them with clCreateProgramWithIL).
#
#   bash scripts/setup-opencl.sh               install what is missing (idempotent), then check
#   bash scripts/setup-opencl.sh --print-env   same, then print the `export OCL_ICD_VENDORS=...`
#                                              line on stdout (everything else goes to stderr):
#                                              eval "$(bash scripts/setup-opencl.sh --print-env)"
#
# What it installs:
#   - apt: ocl-icd-libopencl1 (the ICD loader, libOpenCL.so.1, which opencl3 dlopens at run
#     time), clinfo (for checking by hand), python3-venv when `python3 -m venv` is missing;
#   - PyPI, in a venv outside the repository so every clone and worktree reuses it:
#     ${LINREC_TOOLS:-$HOME/.cache/linrec-tools}/opencl  (about 1 GB; Intel EULA, redistributable)
#     intel-opencl-rt + intel-cmplr-lib-rt (libsvml/libimf/libirng/libintlc that libintelocl needs);
#   - a private vendors directory $VENV/icd with one .icd file naming the venv's libintelocl.so
#     (the wheel's own .icd holds a conda placeholder path and cannot be used).
#
# The venv's lib/ must NOT go on LD_LIBRARY_PATH: it holds Intel's own libOpenCL.so.1, which
# would shadow the system ICD loader. libintelocl.so finds its dependencies through RUNPATH
# $ORIGIN, so OCL_ICD_VENDORS alone is enough.
set -euo pipefail

OPENCL_RT_VERSION="2026.2.0"
PIP_PACKAGES=("intel-opencl-rt==$OPENCL_RT_VERSION" "intel-cmplr-lib-rt==$OPENCL_RT_VERSION")
APT_PACKAGES=(ocl-icd-libopencl1 clinfo)

TOOLS="${LINREC_TOOLS:-$HOME/.cache/linrec-tools}"
VENV="$TOOLS/opencl"
ICD_DIR="$VENV/icd"
# Written last: its presence with the right content means a complete install of these versions.
STAMP="$VENV/.linrec-installed"
STAMP_CONTENT="${PIP_PACKAGES[*]}"

log() { echo "[setup-opencl] $*" >&2; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ "$(uname -m)" != "x86_64" ]; then
  log "Intel's CPU OpenCL runtime exists for x86-64 only (this is $(uname -m)); nothing installed."
  log "The OpenCL tests will skip (or fail under CI=true)."
  exit 1
fi

# --- Debian packages ------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -m venv --help >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq >&2
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# --- the venv with Intel's runtime ----------------------------------------------------------
mkdir -p "$TOOLS"
# Two set-ups running at once (two clones, two CI steps) would otherwise race on the venv.
exec 9>"$TOOLS/.opencl.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ] && [ -f "$VENV/lib/libintelocl.so" ]; then
  log "Intel CPU OpenCL runtime $OPENCL_RT_VERSION present in $VENV"
else
  # Anything without a matching stamp is a partial or outdated install: start again.
  rm -rf "$VENV"
  log "installing Intel CPU OpenCL runtime $OPENCL_RT_VERSION into $VENV (about 225 MB download)"
  start=$(date +%s)
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" >&2
  if [ ! -f "$VENV/lib/libintelocl.so" ]; then
    log "pip finished but $VENV/lib/libintelocl.so is missing; the wheel layout changed?"
    exit 1
  fi
  mkdir -p "$ICD_DIR"
  echo "$VENV/lib/libintelocl.so" >"$ICD_DIR/intel-cpu.icd"
  echo "$STAMP_CONTENT" >"$STAMP"
  log "installed in $(($(date +%s) - start)) s"
fi

# Rewritten every time: cheap, and it repairs a vendors dir whose .icd was removed or edited.
mkdir -p "$ICD_DIR"
echo "$VENV/lib/libintelocl.so" >"$ICD_DIR/intel-cpu.icd"

# --- check ----------------------------------------------------------------------------------
if command -v clinfo >/dev/null 2>&1; then
  # Captured first: `clinfo | grep -q` under pipefail could fail on SIGPIPE.
  platforms=$(OCL_ICD_VENDORS="$ICD_DIR" clinfo -l 2>&1 || true)
  if ! grep -q "Intel(R) OpenCL" <<<"$platforms"; then
    log "clinfo does not list the Intel(R) OpenCL platform with OCL_ICD_VENDORS=$ICD_DIR:"
    echo "$platforms" >&2
    exit 1
  fi
  log "clinfo sees: $(tr -s ' ' <<<"$platforms" | tr '\n' ' ')"
fi

if [ "${1:-}" = "--print-env" ]; then
  echo "export OCL_ICD_VENDORS=\"$ICD_DIR\""
fi
