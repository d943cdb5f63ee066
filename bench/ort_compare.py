#!/usr/bin/env python3
"""Backbone latency of glimpse (tract) beside onnxruntime, same model, same machine, one run.

Usage (from the repository root, after `cargo build --release`):
    pip install onnxruntime numpy
    python3 bench/ort_compare.py [--glimpse target/release/glimpse] [--runs 30]

Runs onnxruntime (CPU, float32, batch 1) with 1 and 2 intra-op threads, then `glimpse bench
--json` with the same thread counts on tract and on glimpse's onnxruntime engine (the very
library this Python onnxruntime loads), and prints the medians and the ratios to Python's
figure: tract's, and the wrapper's (which should be ~1.0: the Rust side adds nothing).
Both run back to back so the ratio is meaningful on a noisy shared machine; absolute numbers are not.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

MODEL = "../shared/models/mobilenet_v2_1.0_224.onnx"
MANIFEST = "models/mobilenet_v2_1.0_224.toml"


def ort_median_ms(threads: int, runs: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--glimpse", default="target/release/glimpse")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    ort_ms = {t: ort_median_ms(t, args.runs) for t in (1, 2)}
    lib = sorted(glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime.so.*")))
    if not lib:
        sys.exit("no libonnxruntime.so.* in the onnxruntime wheel")

    def glimpse_ms(extra):
        ms = {}
        for t in (1, 2):
            out = subprocess.run(
                [args.glimpse, "bench", "--json", "--model", MANIFEST, "--runs", str(args.runs),
                 "--threads", str(t), "--thread-counts", str(t), "--train-samples", "300", *extra],
                check=True, capture_output=True, text=True).stdout
            ms[t] = json.loads(out)["results"][0]["backbone"]["median_ms"]
        return ms

    tract_ms = glimpse_ms([])
    wrapped_ms = glimpse_ms(["--engine", "onnxruntime", "--onnxruntime-library", lib[0]])
    print(f"onnxruntime {ort.__version__}")
    print(f"{'threads':>7} {'python ort ms':>14} {'glimpse ort ms':>15} {'wrapper':>8} "
          f"{'glimpse tract ms':>17} {'tract':>6}")
    for t in (1, 2):
        print(f"{t:>7} {ort_ms[t]:>14.2f} {wrapped_ms[t]:>15.2f} {wrapped_ms[t] / ort_ms[t]:>7.2f}x "
              f"{tract_ms[t]:>17.2f} {tract_ms[t] / ort_ms[t]:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
