#!/usr/bin/env bash
# Nsight Compute profile of linrec's kernels on the GPU machine (no Rust, no LLVM there): one
# launch of each kernel of `linrec bench` at one shape, with the sections that say where a
# latency-bound kernel waits (occupancy, warp states, memory) and the per-SASS-instruction stall
# samples, as text.
#
# Run there after `bash scripts/gpu-session.sh run` (which unpacks .device/session.tgz) or
# after `bash scripts/gpu-bench.sh prepare` here carried .device/bench:
#   bash scripts/gpu-profile.sh [VARIANT] [B,T,H,D] [SET]
# defaults: simple_gla, 4,2048,16,128, art. KERNEL (default `fwd`; or `bwd`) picks the
# kernels: after one warm-up launch of each, COUNT (default 2) launches are profiled. Writes to
# $OUT (else /tmp/out)/profile-*: the details page and the hot SASS instructions as text, the
# report and the SASS source page (CSV) packed in one .tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
variant=${1:-simple_gla}
shape=${2:-4,2048,16,128}
set_=${3:-art}
dir=.device/bench
out=${OUT:-/tmp/out}
kernel=${KERNEL:-fwd}
tag="profile-$variant-${shape//,/x}-$set_-$kernel"
mkdir -p "$out"
if [ ! -x "$dir/linrec" ] || [ ! -f "$dir/$set_/manifest.json" ]; then
  echo "[gpu-profile] no $dir/linrec or $dir/$set_/manifest.json: unpack the session first" >&2
  exit 2
fi
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
if [ -z "$ncu" ]; then
  echo "[gpu-profile] ncu not found" >&2
  exit 2
fi
t0=$SECONDS
# The first launch (a warm-up) is not profiled.
"$ncu" --kernel-name "regex:linrec_.*_$kernel" --launch-skip 1 --launch-count "${COUNT:-2}" \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section SourceCounters --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section SchedulerStats -f -o "$out/$tag" \
  "$dir/linrec" bench "$variant" --device cuda --artifacts "$dir/$set_" --backward \
  --shapes "$shape" --iters 100 --warmup 2 >"$out/$tag.run.log" 2>&1
echo "[gpu-profile] ncu: exit $?, $((SECONDS - t0)) s"
"$ncu" -i "$out/$tag.ncu-rep" --page details >"$out/$tag.details.txt" 2>&1
"$ncu" -i "$out/$tag.ncu-rep" --page source --csv --print-source sass >"$out/$tag.sass.csv" 2>&1
# The 60 SASS instructions with the most stall samples, per kernel.
python3 - "$out/$tag.sass.csv" >"$out/$tag.hot.txt" 2>&1 <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
# One table per kernel, each behind its own header row.
tables, hdr = [], None
for r in rows:
    if "Source" in r and any(h.startswith("Warp Stall Sampling") for h in r):
        hdr = r
        tables.append((hdr, []))
    elif hdr is not None and len(r) == len(hdr):
        tables[-1][1].append(r)
    elif r and hdr is None:
        print(",".join(r))
def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0
for hdr, body in tables:
    col = next(i for i, h in enumerate(hdr) if h.startswith("Warp Stall Sampling (All"))
    src = hdr.index("Source")
    total = sum(num(r[col]) for r in body) or 1.0
    print(f"== kernel table: {len(body)} instructions, {total:.0f} samples; columns: {hdr}")
    for r in sorted(body, key=lambda r: -num(r[col]))[:50]:
        print(f"{100 * num(r[col]) / total:5.1f}%  {r[src]}")
EOF
grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Shared Memory Configuration Size|Dynamic Shared|No Eligible|Issued Warp|Warp Cycles Per Issued|DRAM Throughput|Compute \(SM\) Throughput|linrec_" "$out/$tag.details.txt" | head -80
head -70 "$out/$tag.hot.txt"
tar czf "$out/$tag.tgz" -C "$out" "$tag.ncu-rep" "$tag.sass.csv" "$tag.run.log" &&
  rm -f "$out/$tag.ncu-rep" "$out/$tag.sass.csv" "$out/$tag.run.log"
echo "[gpu-profile] all: $((SECONDS - t0)) s"
