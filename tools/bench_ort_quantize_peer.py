"""Peer for the INT8 numbers: ONNX Runtime's own static quantiser on the same tile encoder.

    python tools/bench_ort_quantize_peer.py PKG_FP32 --tiles 256 --threads 2

PKG_FP32 is a package made by `crlm model export-onnx`. Quantises its tile encoder with
onnxruntime.quantization.quantize_static (QDQ, per-channel, U8S8 asymmetric and S8S8 symmetric),
calibrated on random normalised tiles (speed only: the accuracy numbers come from
`crlm model compare`), and times fp32 and both INT8 graphs with ONNX Runtime's CPU provider.
"""

import argparse
import os
import tempfile
import tomllib

import sys

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

sys.path.insert(0, os.path.dirname(__file__))
from benchtime import median_ms  # noqa: E402


class Tiles(CalibrationDataReader):
    def __init__(self, name, t):
        self.name, self.t, self.i = name, t, 0

    def get_next(self):
        self.i += 1
        if self.i > 8:
            return None
        return {self.name: np.random.default_rng(self.i).standard_normal((16, 3, self.t, self.t)).astype(np.float32)}


def time_ms(path, name, x, threads, repeat):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return median_ms(lambda: s.run(None, {name: x}), repeat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    spec = tomllib.load(open(os.path.join(a.package, "model.toml"), "rb"))
    g = spec["onnx"]["tile_encoder"]
    src, name, t = os.path.join(a.package, g["file"]), g["inputs"][0], spec["slide"]["tile_px"]
    x = np.random.default_rng(0).standard_normal((a.tiles, 3, t, t)).astype(np.float32)
    out = tempfile.mkdtemp()
    variants = {"fp32": src}
    for label, kw in {
        "int8 u8s8 (ORT default)": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8),
        "int8 s8s8 symmetric": dict(
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True}
        ),
    }.items():
        dst = os.path.join(out, label.split()[1] + ".onnx")
        quantize_static(src, dst, Tiles(name, t), quant_format=QuantFormat.QDQ, per_channel=True, **kw)
        variants[label] = dst
    print(f"ONNX Runtime {ort.__version__} CPU, {a.threads} threads, tile encoder, {a.tiles} tiles of {t} px, median of {a.repeat}")
    base = None
    for label, path in variants.items():
        ms = time_ms(path, name, x, a.threads, a.repeat)
        base = base or ms
        print(f"  {label}: {ms:.1f} ms = {a.tiles / ms * 1000:.0f} tiles/s ({base / ms:.2f}x fp32)")


if __name__ == "__main__":
    main()
