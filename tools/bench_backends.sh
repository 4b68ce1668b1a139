#!/usr/bin/env bash
# Backend benchmark (docs/PERFORMANCE.md, "Backends"): one run, same machine, same threads.
#   candle fp32 | ONNX Runtime CPU fp32 | ONNX Runtime CPU int8 (crlm's QDQ graphs)
#   peers: the PyTorch twin (tools/bench_model.py) and ONNX Runtime's own quantiser
#   (tools/bench_ort_quantize_peer.py) on the same tile encoder.
# Needs: a Rust toolchain, python3 with torch, safetensors, onnxruntime.
#   THREADS=2 TILES=256 REPEAT=7 tools/bench_backends.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
TILES=${TILES:-256}
REPEAT=${REPEAT:-7}
cargo build --release --quiet
B=target/release/crlm
KEY=models/packages/demo.key
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
$B model export-onnx --out "$W/fp32" --key $KEY >/dev/null
for i in $(seq 0 31); do $B synth patient "$W/calibration/p$i" --index "$i" >/dev/null; done
$B model quantize "$W/fp32" --calibration "$W/calibration" --out "$W/int8" --key $KEY | head -1
# The accuracy-checked form for the demo (docs/BACKENDS.md): the tile encoder's first two convolutions fp32.
$B model quantize "$W/fp32" --calibration "$W/calibration" --out "$W/int8-mixed" --key $KEY \
  --keep-fp32 slide.conv.conv1,slide.conv.conv2 | head -1
export RAYON_NUM_THREADS=$THREADS CRLM_ONNX__THREADS=$THREADS CRLM_ONNX__PROVIDERS='["cpu"]'
echo "== $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $THREADS threads"
$B model bench "$W/fp32" --backend candle --tiles "$TILES" --repeat "$REPEAT"
$B model bench "$W/fp32" --backend onnx --tiles "$TILES" --repeat "$REPEAT"
$B model bench "$W/int8" --backend onnx --tiles "$TILES" --repeat "$REPEAT"
$B model bench "$W/int8-mixed" --backend onnx --tiles "$TILES" --repeat "$REPEAT"
python3 tools/bench_model.py "$W/fp32" --tiles "$TILES" --repeat "$REPEAT" --threads "$THREADS"
python3 tools/bench_ort_quantize_peer.py "$W/fp32" --tiles "$TILES" --repeat "$REPEAT" --threads "$THREADS"
