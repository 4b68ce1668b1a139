"""Parity vectors: small random CRLM-Net weights, inputs and the twin's outputs.

    python models/reference/make_parity.py models/reference/parity

`cargo test -p crlm-models --test models parity` loads the weights by name into the candle network,
runs the same inputs and requires every output within 1e-4 (fp32). No PyTorch is needed there.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

from crlm_net import CrlmNet, risk_2y

NETWORK = {
    "embed": 8,
    "ct_channels": [4, 8, 8],
    "tile_channels": [4, 8, 8],
    "attention_hidden": 4,
    "clinical_hidden": 8,
    "fusion_hidden": 8,
    "intervals": 4,
    "tile_mean": [0.0, 0.0, 0.0],
    "tile_std": [1.0, 1.0, 1.0],
}
CLINICAL_WIDTH = 6
# present (ct, slide, clinical) of each parity case
CASES = [(1, 1, 1), (1, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0), (0, 0, 1)]


def main(out):
    torch.manual_seed(1234)
    model = CrlmNet(NETWORK, CLINICAL_WIDTH).eval()
    with torch.no_grad():
        for p in model.parameters():  # wider than default init, so every path matters
            p.uniform_(-0.6, 0.6)
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "weights.safetensors"))
    tensors, meta = {}, []
    for i, present in enumerate(CASES):
        z, side, n, t = 4 + i % 2, 16, 3 + i, 16
        ct = torch.rand(1, z, side, side)
        tiles = torch.randn(1, n, 3, t, t)
        clinical = torch.randn(1, CLINICAL_WIDTH)
        p = torch.tensor([present], dtype=torch.float32)
        with torch.no_grad():
            h, a_ct, a_sl = model(ct, tiles, torch.ones(1, n), clinical, p)
        tensors[f"case{i}.ct"] = ct[0].contiguous()
        tensors[f"case{i}.tiles"] = tiles[0].contiguous()
        tensors[f"case{i}.clinical"] = clinical.contiguous()
        tensors[f"case{i}.hazards"] = h[0].contiguous()
        tensors[f"case{i}.risk"] = risk_2y(h).contiguous()
        tensors[f"case{i}.slice_attention"] = a_ct[0].contiguous()
        tensors[f"case{i}.tile_attention"] = a_sl[0].contiguous()
        meta.append({"present": list(present)})
    save_file(tensors, os.path.join(out, "cases.safetensors"))
    json.dump(
        {"network": NETWORK, "clinical_width": CLINICAL_WIDTH, "cases": meta, "torch": torch.__version__},
        open(os.path.join(out, "parity.json"), "w"),
        indent=2,
    )


if __name__ == "__main__":
    main(sys.argv[1])
