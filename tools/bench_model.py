"""Peer benchmark for `crlm model bench`: the PyTorch twin on the same shapes and threads.

    python tools/bench_model.py models/packages/demo --tiles 256 --repeat 5 --threads 2
"""

import argparse
import os
import sys
import time
import tomllib

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models", "reference"))
from crlm_net import CrlmNet  # noqa: E402


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("package")
    ap.add_argument("--tiles", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = tomllib.load(open(os.path.join(a.package, "model.toml"), "rb"))
    weights = load_file(os.path.join(a.package, spec["weights"]["file"]))
    width = weights["clinical.fc1.weight"].shape[1]
    net = CrlmNet(spec["network"], width).eval()
    net.load_state_dict(weights)
    x, y, z = spec["ct"]["shape"]
    t = spec["slide"]["tile_px"]
    ct = torch.rand(1, z, y, x)
    tiles = torch.randn(1, a.tiles, 3, t, t)
    mask = torch.ones(1, a.tiles)
    clin = torch.zeros(1, width)
    with torch.no_grad():
        ct_ms = median_ms(lambda: net(ct, tiles[:, :1], mask[:, :1], clin, torch.tensor([[1.0, 0, 1]])), a.repeat)
        tile_ms = median_ms(
            lambda: net.slide.proj(net.slide.conv(tiles[0])), a.repeat
        )
        all_ms = median_ms(lambda: net(ct, tiles, mask, clin, torch.ones(1, 3)), a.repeat)
    print(f"PyTorch {torch.__version__} CPU, {a.threads} threads, median of {a.repeat}")
    print(f"  CT volume {[x, y, z]} (+ clinical, fusion; one tile): {ct_ms:.1f} ms")
    print(f"  tile encoder: {a.tiles} tiles of {t} px in {tile_ms:.1f} ms = {a.tiles / tile_ms * 1000:.0f} tiles/s")
    print(f"  whole model, CT + {a.tiles} tiles + clinical: {all_ms:.1f} ms")


if __name__ == "__main__":
    main()
