#!/usr/bin/env python3
"""Compares two `glimpse classify --json --with-embedding` outputs (JSON Lines, one object per
image: {"file", "top_k": [{"index", "label", "score"}], "embedding": [...]}), e.g. the x86-64
build's against the aarch64 build's under qemu. Passes when every image is in both, has the same
top-1 class in both, and embeddings agree to a relative L2 error ||a - b|| / ||a|| <= the
tolerance. Prints one line per image with the figures. Standard library only (no numpy on CI).

Usage: compare_classify.py REFERENCE.jsonl CANDIDATE.jsonl [--tolerance 1e-4]
"""
import argparse
import json
import math
import os
import sys


def load(path):
    """file basename -> record; a line that is not a classified image is an error."""
    records = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            name = os.path.basename(rec.get("file", ""))
            if rec.get("error"):
                sys.exit(f"{path}:{n}: {name}: classify reported an error: {rec['error']}")
            if not rec.get("top_k") or not rec.get("embedding"):
                sys.exit(f"{path}:{n}: {name}: missing top_k or embedding (was --with-embedding given?)")
            records[name] = rec
    if not records:
        sys.exit(f"{path}: no images")
    return records


def relative_l2(reference, candidate):
    if len(reference) != len(candidate):
        return math.inf
    diff = math.sqrt(sum((a - b) ** 2 for a, b in zip(reference, candidate)))
    norm = math.sqrt(sum(a * a for a in reference))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    ref, cand = load(args.reference), load(args.candidate)

    failures = []
    if set(ref) != set(cand):
        failures.append(f"different images: only in reference {sorted(set(ref) - set(cand))}, "
                        f"only in candidate {sorted(set(cand) - set(ref))}")
    worst = 0.0
    for name in sorted(set(ref) & set(cand)):
        r, c = ref[name], cand[name]
        r_top, c_top = r["top_k"][0], c["top_k"][0]
        err = relative_l2(r["embedding"], c["embedding"])
        worst = max(worst, err)
        same = r_top["index"] == c_top["index"]
        print(f"{name:32} top-1 {r_top['index']:4} {r_top['label'][:24]:24} "
              f"p {r_top['score']:.4f} / {c_top['score']:.4f}  embedding rel. L2 {err:.2e}"
              f"{'' if same else '  TOP-1 DIFFERS: ' + str(c_top['index'])}")
        if not same:
            failures.append(f"{name}: top-1 {r_top['index']} ({r_top['label']}) vs "
                            f"{c_top['index']} ({c_top['label']})")
        if not err <= args.tolerance:
            failures.append(f"{name}: embedding relative L2 {err:.3e} > {args.tolerance:g}")
    print(f"{len(ref)} images, worst embedding relative L2 {worst:.2e} (tolerance {args.tolerance:g})")
    if failures:
        print("MISMATCH:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
