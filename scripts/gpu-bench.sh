#!/usr/bin/env bash
# The benchmark of DESIGN §9 on a GPU machine with no Rust and no LLVM: `linrec bench --backward`
# (CUDA events; forward, and forward + backward) on two kernel sets — the fused forward and the
# split one (states, then a chunk-parallel output) — against fla 0.6.0 and PyTorch SDPA in the
# same call, merged into one table.
#
# Here (with LLVM):   bash scripts/gpu-bench.sh prepare [DIR]
#   builds linrec without `jit` ($BENCH_TARGET_DIR/nojit), compiles the bench's kernels
#   (linear_attn, retention, simple_gla; sm_90a, what an H100/H200 loads; bf16; K=V in HEAD_DIMS,
#   default 64,128,256;
#   chunk 64; every call option; forward and backward: `--direction both`) once per set in SETS:
#     art        the default forward (LINREC_FORWARD unset: the fused kernel, and the split-scan
#                over T which the runtime takes for long sequences on few heads) + backward
#     art-split  LINREC_FORWARD=split: the split forward + the same backward
#     art-fused  LINREC_FORWARD=fused (art-scan: scan), for comparisons
#     art-notma  the default forms with LINREC_TENSOR_CORES=wgmma-without-tma: sm_90a's wgmma,
#                token rows by the threads' 16-byte copies instead of TMA (any set ending in
#                -notma), for comparisons
#     art-90     the default forms for sm_90 (no wgmma: mma.sync on row-major tiles), run with
#                LINREC_CUDA_TARGET=sm_90; any set whose name ends in -90 is compiled and run
#                for sm_90 (art-split-90: the split forward there), any other for sm_90a
#   and downloads the pure-Python wheels fla-core 0.6.0 and einops. DIR (default .device/bench,
#   git-ignored) is what the device call carries.
# There (the GPU):    bash scripts/gpu-bench.sh run [DIR]
#   installs the wheels (--no-deps --target), runs `linrec bench --device cuda --backward` on
#   every set in SETS (label `linrec` for art, `linrec-split` for art-split: `linrec` + the part
#   after `art`), then scripts/bench-fla.py (unless FLA=0), then scripts/bench-merge.py; JSON,
#   logs and the table go to $OUT (else DIR/out). Each step prints its duration.
#   fla's Triton autotuning on a fresh machine is slow (minutes for the first shape's fwd+bwd),
#   so fla's forwards run first at every shape, its fwd+bwd after them and only at
#   FLA_BWD_SHAPES, and anything past FLA_BUDGET_S seconds is
#   recorded as skipped; likewise each linrec set stops starting measurements after
#   LINREC_BUDGET_S seconds (and skips one whose launches would not fit), writing its JSON after
#   every row. Keep the device call's timeout above ~60 s + the linrec budgets + the fla budget.
#
# Knobs (environment):
#   SHAPES          `fla` (default: DESIGN §9's eight) or `B,T,H,D[;B,T,H,D...]` (K = V = D;
#                   prepare compiles HEAD_DIMS, so every D must be among them)
#   SETS            kernel sets, default "art art-split"
#   VARIANTS        default "linear_attn retention simple_gla"
#   HEAD_DIMS       prepare only, default 64,128,256
#   ITERS           timed runs per measurement (>= 100), default 100
#   FLA             0: skip fla and SDPA (the table then has linrec's columns only)
#   FLA_BWD_SHAPES  default "8,2048,16,128;1,32768,16,128"
#   FLA_BUDGET_S    default 330
#   LINREC_BUDGET_S per linrec set, default 120
#   BENCH_TARGET_DIR  prepare only: where cargo builds (default target)
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
dir=${2:-.device/bench}
read -r -a VARIANTS <<<"${VARIANTS:-linear_attn retention simple_gla}"
read -r -a SETS <<<"${SETS:-art art-split}"
SHAPES=${SHAPES:-fla}
ITERS=${ITERS:-100}

# Runs "$@" and prints how long it took; returns its status.
step() {
  local name=$1 t0=$SECONDS rc
  shift
  "$@"
  rc=$?
  echo "[gpu-bench] $name: $((SECONDS - t0)) s (exit $rc)" >&2
  return $rc
}

# The `LINREC_FORWARD` of a set: art-split → split, art-fused → fused, art-scan → scan, any
# other → unset (auto: the fused kernel, or the split-scan over T for long sequences on few
# heads, picked at launch).
forward_of() {
  local s=${1%-90}
  case "${s%-notma}" in
    *-split) echo split ;;
    *-fused) echo fused ;;
    *-scan) echo scan ;;
    *) echo "" ;;
  esac
}

# The `LINREC_TENSOR_CORES` of a set: a name ending in -notma (art-notma, art-split-notma)
# keeps sm_90a's wgmma but loads the token rows with the threads' copies instead of TMA.
tensor_cores_of() {
  case "$1" in
    *-notma) echo wgmma-without-tma ;;
    *) echo "" ;;
  esac
}

# The CUDA target of a set: sm_90 for a name ending in -90, else sm_90a.
target_of() {
  case "$1" in
    *-90) echo sm_90 ;;
    *) echo sm_90a ;;
  esac
}

case "$mode" in
  prepare)
    eval "$(bash scripts/setup.sh --print-env)"
    tdir=${BENCH_TARGET_DIR:-target}
    mkdir -p "$dir/whl"
    step "build linrec (no jit)" \
      cargo build --release --locked --no-default-features --bin linrec --target-dir "$tdir/nojit" \
      || exit 1
    cp "$tdir/nojit/release/linrec" "$dir/linrec"
    step "build linrec (jit)" \
      cargo build --locked --quiet --bin linrec --target-dir "$tdir/gpucheck" || exit 1
    # Compiles set $1 into $dir/$1 (its per-kernel lines into $dir/$1.compile.log).
    compile_set() {
      local fwd tc
      fwd=$(forward_of "$1")
      tc=$(tensor_cores_of "$1")
      rm -rf "${dir:?}/$1"
      env -u LINREC_FORWARD -u LINREC_TENSOR_CORES ${fwd:+LINREC_FORWARD=$fwd} ${tc:+LINREC_TENSOR_CORES=$tc} \
        "$tdir/gpucheck/debug/linrec" compile \
        "${VARIANTS[@]}" --target "$(target_of "$1")" --dtype bf16 --head-dims "${HEAD_DIMS:-64,128,256}" \
        --direction both --out "$dir/$1" 2>"$dir/$1.compile.log"
    }
    for s in "${SETS[@]}"; do
      fwd=$(forward_of "$s")
      step "compile $s ($(target_of "$s"), LINREC_FORWARD=${fwd:-auto})" compile_set "$s" \
        || { tail -n 5 "$dir/$s.compile.log"; exit 1; }
      tail -n 1 "$dir/$s.compile.log"
    done
    step "download wheels" \
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      -d "$dir/whl" fla-core==0.6.0 einops==0.8.2 || exit 1
    du -sh "$dir"/*/
    du -sh "$dir"
    ;;
  run)
    out=${OUT:-$dir/out}
    mkdir -p "$out"
    t_all=$SECONDS
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    jsons=()
    for s in "${SETS[@]}"; do
      label=linrec${s#art}
      if [ ! -f "$dir/$s/manifest.json" ]; then
        echo "[gpu-bench] no $dir/$s/manifest.json: run \`bash scripts/gpu-bench.sh prepare\` with SETS including $s" >&2
        continue
      fi
      step "linrec bench --backward $s ($label, $(target_of "$s"))" \
        env LINREC_CUDA_TARGET="$(target_of "$s")" "$dir/linrec" bench "${VARIANTS[@]}" --device cuda --artifacts "$dir/$s" --backward \
        --label "$label" --shapes "$SHAPES" --iters "$ITERS" --json "$out/$label.json" \
        --budget-s "${LINREC_BUDGET_S:-120}" \
        2>&1 | tee "$out/$label.log"
      [ -s "$out/$label.json" ] && jsons+=("$out/$label.json")
    done
    if [ "${FLA:-1}" != 0 ]; then
      step "install wheels" \
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$dir"/whl/*.whl || exit 1
      export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
      step "fla + SDPA" \
        python3 scripts/bench-fla.py --shapes "$SHAPES" --iters "$ITERS" --json "$out/fla.json" \
        --bwd-shapes "${FLA_BWD_SHAPES:-8,2048,16,128;1,32768,16,128}" \
        --budget-s "${FLA_BUDGET_S:-330}" 2>&1 | tee "$out/fla.log"
      [ -s "$out/fla.json" ] && jsons+=("$out/fla.json")
    fi
    if [ ${#jsons[@]} -gt 0 ]; then
      python3 scripts/bench-merge.py "${jsons[@]}" | tee "$out/table.md"
    else
      echo "[gpu-bench] nothing to merge" >&2
    fi
    echo "[gpu-bench] run: $((SECONDS - t_all)) s in all" >&2
    ;;
  *)
    echo "usage: bash scripts/gpu-bench.sh prepare|run [DIR]   (knobs: see the header)" >&2
    exit 2
    ;;
esac
