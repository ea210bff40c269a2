#!/usr/bin/env python3
"""Merges `linrec bench --json` and `scripts/bench-fla.py --json` files into ONE table (markdown).

usage: python3 scripts/bench-merge.py FILE.json [FILE.json ...]

Each file is told apart by its "tool" key: any number of `linrec bench` runs (one column group
per `--label`, e.g. `linrec` for the fused forward and `linrec-split` for the split one; a file
without a label, from before `--label`, is `linrec`) and at most one bench-fla.py run. The old
form `bench-merge.py LINREC.json FLA.json` still works.

Per (variant, shape): the HBM floor of the forward (bytes read + written once over the device
copy bandwidth measured by `linrec bench`), fla 0.6.0's forward and fwd+bwd ms (or why it has
none), then per label: the median forward ms, the median fwd+bwd ms (`linrec bench --backward`),
fla's time over it for both (> 1: linrec is faster) and the forward's ratio to the floor; last,
PyTorch SDPA-causal's forward ms at the same shape. A number a file does not have is `–`;
one a run left out for its time budget (`linrec bench --budget-s`, bench-fla.py --budget-s) is
`skipped`.
"""
import json
import sys

FLA_TOOL = "scripts/bench-fla.py"


def num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def f3(x):
    return f"{x:.3f}" if num(x) else "–"


def ratio(a, b, digits=2):
    return f"{a / b:.{digits}f}" if num(a) and num(b) and b > 0 else "–"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"bench-merge: {path}: {e}")


def main():
    paths = sys.argv[1:]
    if not paths or any(p in ("-h", "--help") for p in paths):
        print(__doc__.strip())
        return 0 if paths else 2
    runs, fla = [], None
    for path in paths:
        doc = load(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            sys.exit(f"bench-merge: {path}: not a bench JSON (no results list)")
        if doc.get("tool") == FLA_TOOL or (
            doc.get("tool") is None and any("impl" in r for r in doc["results"])
        ):
            if fla is not None:
                sys.exit(f"bench-merge: {path}: a second fla file")
            fla = doc
        else:
            runs.append(doc)

    # One column group per label; a label seen twice gets #2, #3.
    labels, seen = [], {}
    for doc in runs:
        label = str(doc.get("label") or "linrec")
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")

    for label, doc in zip(labels, runs):
        bw = doc.get("bandwidth_gb_per_s")
        print(f"{label}: {doc.get('device', '?')}, {doc.get('timer', '?')}, median of "
              f"{doc.get('iters', '?')}; copy bandwidth {f'{bw:.0f}' if num(bw) else '?'} GB/s "
              f"({doc.get('bandwidth_how', '?')})")
    how = next((d["fwd_bwd_how"] for d in runs if d.get("fwd_bwd_how")), None)
    if how:
        print(f"linrec fwd+bwd: {how}")
    for k in ("dtype", "chunk", "state", "device"):
        values = {str(d.get(k)) for d in runs}
        if len(values) > 1:
            print(f"WARNING: the linrec runs differ in {k}: {', '.join(sorted(values))}")
    if fla is not None:
        print(f"fla {fla.get('fla', '?')}, torch {fla.get('torch', '?')}, triton "
              f"{fla.get('triton', '?')}, CUDA {fla.get('cuda', '?')}: {fla.get('device', '?')}, "
              f"{fla.get('timer', '?')}, median of {fla.get('iters', '?')}")
    print()

    by = {}
    if fla is not None:
        for r in fla["results"]:
            try:
                by[(r["impl"], r["variant"], tuple(r["shape"]))] = r
            except (KeyError, TypeError):
                continue
    # Rows: every (variant, shape) of the linrec runs, in order of first appearance; else fla's.
    keys, rows = [], [{} for _ in runs]
    for i, doc in enumerate(runs):
        for r in doc["results"]:
            try:
                key = (r["variant"], tuple(r["shape"]))
            except (KeyError, TypeError):
                continue
            if key not in rows[i]:
                rows[i][key] = r
            if key not in keys:
                keys.append(key)
    if not runs and fla is not None:
        keys = [(v, s) for (impl, v, s) in by if impl == "fla"]

    head = ["variant", "B,T,H,D", "floor ms", "fla fwd", "fla fwd+bwd"]
    for label in labels:
        head += [f"{label} fwd", f"{label} fwd+bwd", "fla/fwd", "fla/fwd+bwd", "fwd/floor"]
    head.append("SDPA fwd")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in keys:
        variant, shape = key
        f = by.get(("fla", variant, shape), {})
        s = by.get(("torch", "sdpa_causal", shape), {})
        floor = next((r[key].get("floor_ms") for r in rows if key in r
                      and num(r[key].get("floor_ms"))), None)
        fwd = f.get("fwd_ms")
        fb = f.get("fwdbwd_ms")
        if num(fb):
            fb_text = f3(fb)
        elif f.get("bwd_error"):
            fb_text = "refused"
        elif "skipped" in str(f.get("note", "")):
            fb_text = "skipped"
        else:
            fb_text = "–"
        fwd_text = f3(fwd) if num(fwd) else ("error" if f.get("fwd_error") else
                                              "skipped" if "skipped" in str(f.get("note", ""))
                                              else "–")
        cells = [variant, ",".join(map(str, shape)), f"{floor:.4f}" if num(floor) else "–",
                 fwd_text, fb_text]
        for r in rows:
            x = r.get(key, {})
            ms, fbms = x.get("ms"), x.get("fwd_bwd_ms")
            to_floor = x.get("ratio_to_floor")
            if not num(to_floor):
                to_floor = ms / x["floor_ms"] if num(ms) and num(x.get("floor_ms")) \
                    and x["floor_ms"] > 0 else None
            fwd_cell = "skipped" if x.get("skipped") and not num(ms) else f3(ms)
            fb_cell = "skipped" if (x.get("skipped") or x.get("fwd_bwd_skipped")) \
                and not num(fbms) else f3(fbms)
            cells += [fwd_cell, fb_cell, ratio(fwd, ms), ratio(fb, fbms),
                      f"{to_floor:.1f}" if num(to_floor) else "–"]
        cells.append(f3(s.get("fwd_ms")))
        print("| " + " | ".join(cells) + " |")
    print()
    print("ms: medians. fla/fwd, fla/fwd+bwd: fla's time over linrec's (> 1: linrec is faster). "
          "fwd/floor: the forward's time over the HBM floor (inputs read + outputs written once "
          "over the measured copy bandwidth).")
    if fla is not None:
        errs = sorted({r.get("bwd_error") for r in fla["results"] if r.get("bwd_error")})
        for e in errs:
            print(f"\nfla fwd+bwd refused: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
