#!/usr/bin/env bash
# One device call that checks and times linrec on a Hopper GPU: the conformance matrices
# (scripts/gpu-check.sh) and the benchmark against fla 0.6.0 (scripts/gpu-bench.sh), packed
# into one archive so the call's carry stays under its 64 MiB limit (the kernels are PTX text:
# ~100 MB as files, ~20 MB compressed).
#
# Here (with LLVM):   bash scripts/gpu-session.sh prepare
#   gpu-check prepare (sm_90 only) into .device/gc, gpu-bench prepare into .device/bench, then
#   .device/session.tgz. Carry `.device/session.tgz` in the device call.
# There (the GPU):    bash scripts/gpu-session.sh run
#   unpacks, runs gpu-check (CHECK_S seconds at most, default 150), then gpu-bench with the
#   knobs below; everything goes to $OUT (check.log, bench/), a summary to stdout.
#
# Knobs (environment): SETS (default "art art-split"; sets are sm_90a's, what an H100/H200
# loads, a set ending in -90 sm_90's), CHECK_TARGETS (the conformance check's CUDA targets,
# compiled and run, default sm_90a), SHAPES (default fla: the issue's anchors
# first), LINREC_BUDGET_S (default 60 per set), FLA_BUDGET_S (default 240; fla's Triton
# autotuning takes minutes on a fresh machine), FLA=0 to skip fla; HEAD_DIMS at prepare.
# Keep the call's timeout above CHECK_S + 2·LINREC_BUDGET_S + FLA_BUDGET_S + ~60 s.
set -uo pipefail
cd "$(dirname "$0")/.."
export SETS=${SETS:-art art-split}
case "${1:-}" in
  prepare)
    TARGETS=${CHECK_TARGETS:-sm_90a} bash scripts/gpu-check.sh prepare .device/gc || exit 1
    # The backward set holds the forward kernels too: the forward check reads it.
    if [ -f .device/gc/art-bwd/manifest.json ]; then
      rm -rf .device/gc/art && ln -s art-bwd .device/gc/art
    fi
    bash scripts/gpu-bench.sh prepare .device/bench || exit 1
    tar czf .device/session.tgz -C .device gc bench || exit 1
    ls -la .device/session.tgz
    ;;
  run)
    out=${OUT:-/tmp/out}
    mkdir -p "$out"
    t0=$SECONDS
    tar xzf .device/session.tgz -C .device || exit 1
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
    RUN_TARGETS=${CHECK_TARGETS:-default} timeout "${CHECK_S:-150}" \
      bash scripts/gpu-check.sh run .device/gc >"$out/check.log" 2>&1
    echo "[gpu-session] check: exit $?, $((SECONDS - t0)) s"
    grep -E "passed|^FAIL" "$out/check.log" | head -40
    LINREC_BUDGET_S=${LINREC_BUDGET_S:-60} FLA_BUDGET_S=${FLA_BUDGET_S:-240} OUT="$out/bench" \
      bash scripts/gpu-bench.sh run .device/bench 2>&1 | tail -80
    echo "[gpu-session] all: $((SECONDS - t0)) s"
    ;;
  *)
    echo "usage: bash scripts/gpu-session.sh prepare|run   (knobs: see the header)" >&2
    exit 2
    ;;
esac
