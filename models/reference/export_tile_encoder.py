"""A third-party ONNX graph for the onnx backend's test: the PyTorch twin's tile encoder,
exported by torch.onnx.export (not by crlm), with its own tensor names.

    python models/reference/export_tile_encoder.py models/packages/demo \
        models/reference/onnx/tile_encoder_torch.onnx

The graph takes `input` [batch, 3, T, T] (normalised tiles) and gives `output` [batch, E]. The
onnx backend test puts it into an exported demo package in place of crlm's own tile encoder
(model.toml's [onnx.tile_encoder] names `input` and `output`) and requires the prediction to
match candle's within 1e-4. Needs torch, safetensors (and onnx for the exporter).
"""

import os
import sys
import tomllib

import torch
from safetensors.torch import load_file
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from crlm_net import SlideEncoder  # noqa: E402


class TileEncoder(nn.Module):
    """Per-tile embeddings only: conv stack, spatial mean, projection, ReLU."""

    def __init__(self, slide):
        super().__init__()
        self.slide = slide

    def forward(self, x):
        return F.relu(self.slide.proj(self.slide.conv(x)))


def main():
    pkg, out = sys.argv[1], sys.argv[2]
    spec = tomllib.load(open(os.path.join(pkg, "model.toml"), "rb"))
    net = spec["network"]
    slide = SlideEncoder(net)
    weights = load_file(os.path.join(pkg, spec["weights"]["file"]))
    slide.load_state_dict({k[len("slide."):]: v for k, v in weights.items() if k.startswith("slide.")})
    model = TileEncoder(slide).eval()
    t = spec["slide"]["tile_px"]
    example = torch.randn(2, 3, t, t)
    torch.onnx.export(
        model,
        (example,),
        out,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
