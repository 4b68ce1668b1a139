"""Peer benchmark for `crlm model bench`: the PyTorch twin on the same shapes and threads.

    python tools/bench_model.py models/packages/demo --tiles 256 --repeat 5 --threads 2
    python tools/bench_model.py models/packages/demo --tiles 4096 --device cuda --half   # GPU, FP16
"""

import argparse
import os
import sys
import tomllib

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models", "reference"))
from crlm_net import CrlmNet  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from benchtime import median_ms  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="FP16 weights and inputs (GPU)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    dtype = torch.float16 if a.half else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    spec = tomllib.load(open(os.path.join(a.package, "model.toml"), "rb"))
    weights = load_file(os.path.join(a.package, spec["weights"]["file"]))
    width = weights["clinical.fc1.weight"].shape[1]
    net = CrlmNet(spec["network"], width).eval()
    net.load_state_dict(weights)
    net = net.to(dev, dtype)
    x, y, z = spec["ct"]["shape"]
    t = spec["slide"]["tile_px"]
    ct = torch.rand(1, z, y, x, device=dev, dtype=dtype)
    tiles = torch.randn(1, a.tiles, 3, t, t, device=dev, dtype=dtype)
    mask = torch.ones(1, a.tiles, device=dev, dtype=dtype)
    clin = torch.zeros(1, width, device=dev, dtype=dtype)
    some = torch.tensor([[1.0, 0, 1]], device=dev, dtype=dtype)
    every = torch.ones(1, 3, device=dev, dtype=dtype)
    with torch.no_grad():
        ct_ms = median_ms(lambda: net(ct, tiles[:, :1], mask[:, :1], clin, some), a.repeat, sync)
        tile_ms = median_ms(lambda: net.slide.proj(net.slide.conv(tiles[0])), a.repeat, sync)
        all_ms = median_ms(lambda: net(ct, tiles, mask, clin, every), a.repeat, sync)
    where = f"{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else f"CPU, {a.threads} threads"
    print(f"PyTorch {torch.__version__} {where}, {'fp16' if a.half else 'fp32'}, median of {a.repeat}")
    print(f"  CT volume {[x, y, z]} (+ clinical, fusion; one tile): {ct_ms:.1f} ms")
    print(f"  tile encoder: {a.tiles} tiles of {t} px in {tile_ms:.1f} ms = {a.tiles / tile_ms * 1000:.0f} tiles/s")
    print(f"  whole model, CT + {a.tiles} tiles + clinical: {all_ms:.1f} ms")


if __name__ == "__main__":
    main()
