#!/usr/bin/env python3
"""Tile-encoder throughput of a package's ONNX tile encoder: crlm (`crlm model bench`, the onnx
backend) against onnxruntime in Python on the same graph, the same tile values, the same batch
and the same threads, in one run (docs/PERFORMANCE.md).

    python3 tools/bench_parts.py /tmp/ref-resnet50 --crlm target/release/crlm --tiles 256 --threads 2

The tile values are the ones `crlm model bench` uses: ((i * 104729) % 1000) / 500 - 1 over the
flattened [n, 3, T, T] tensor.
"""

import argparse
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(__file__))
from benchtime import median_ms  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--crlm", default="target/release/crlm")
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternate the two this many times (drift on a shared CPU)")
    a = ap.parse_args()
    spec = tomllib.load(open(os.path.join(a.package, "model.toml"), "rb"))
    part = spec["parts"]["tile_encoder"]
    batch = spec["slide"].get("tile_batch", 256)
    t = spec["slide"]["tile_px"]
    i = np.arange(a.tiles * 3 * t * t, dtype=np.int64)
    tiles = (((i * 104_729) % 1000).astype(np.float32) / 500.0 - 1.0).reshape(a.tiles, 3, t, t)

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(os.path.join(a.package, part["file"]), so, providers=["CPUExecutionProvider"])
    name = part["inputs"]["tiles"]

    def run():
        for k in range(0, a.tiles, batch):
            s.run(None, {name: tiles[k:k + batch]})

    env = dict(os.environ, CRLM_ONNX__THREADS=str(a.threads), CRLM_ONNX__PROVIDERS='["cpu"]',
               CRLM_ONNX__ALLOW_FALLBACK="false")
    py, cr = [], []
    for _ in range(a.rounds):
        py.append(median_ms(run, a.repeat, lambda: None))
        out = subprocess.run([a.crlm, "model", "bench", a.package, "--backend", "onnx", "--tiles", str(a.tiles),
                              "--repeat", str(a.repeat)], env=env, check=True, capture_output=True, text=True).stdout
        m = re.search(r"tile encoder: \d+ tiles of \d+ px in batches of \d+ in ([\d.]+) ms", out)
        cr.append(float(m.group(1)))
    py_ms, crlm_ms = min(py), min(cr)
    print(f"rounds: onnxruntime-python {['%.0f' % x for x in py]} ms, crlm {['%.0f' % x for x in cr]} ms (best of each)")
    print(f"onnxruntime {ort.__version__} (Python), CPU, {a.threads} threads, batches of {batch}, median of {a.repeat}:"
          f" {a.tiles} tiles of {t} px in {py_ms:.0f} ms = {a.tiles / py_ms * 1000:.1f} tiles/s")
    print(out.rstrip())
    print(f"crlm / onnxruntime-python tile throughput: {py_ms / crlm_ms:.3f}x")


if __name__ == "__main__":
    main()
