#!/usr/bin/env python3
"""Reference multimodal packages (model.toml format 2) built from PyTorch, with seeded random
weights: timing and plumbing only, never a model of anything (docs/MODEL.md, issue 18).

The topology of a published-scale CRLM model:
- tile encoder: ResNet-50 cut after layer3, global average pool (1024-d, as in CLAM), or ViT-S/16
  (384-d, the class token) with --tile vit-s16;
- slide aggregator: CLAM-SB gated attention (tile width -> 512, attention 256), attention kept;
- CT encoder: 3D convolutions on 64 x 128 x 128 (input [1, 1, Z, Y, X]);
- clinical encoder: an MLP over the package's clinical vector (the demo's encoding);
- fusion: embeddings times the presence mask, and the mask, through an MLP to 8 hazards of
  6 months (a 48-month model: the box takes the 24-month risk from the first four).

--scale small keeps the topology (every ResNet block, the same parts and data flow) with a few
channels and small inputs: models/packages/reference-small, which the tests run.

Writes OUT/model.toml and OUT/onnx/*.onnx, and REFERENCE (default OUT.safetensors beside the
folder): fixed inputs and PyTorch's outputs for parity checks. Sign with
`crlm model sign OUT --key KEY`.

    python3 tools/reference_package.py --scale study --out /tmp/ref-resnet50
    python3 tools/reference_package.py --scale small --out models/packages/reference-small \
        --reference models/reference/reference-small.safetensors
"""

import argparse
import pathlib
import re
import sys

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCALES = {
    # ResNet base width, tile side, um/px, CT grid (x, y, z), CT channels, CT and clinical widths.
    "study": dict(base=64, tile_px=224, mpp=0.5, ct=(128, 128, 64), ct_ch=(16, 32, 64, 128), e_ct=256,
                  e_clin=64, agg=(512, 256), fusion=128, vit=(384, 6, 12), tile_batch=32),
    "small": dict(base=4, tile_px=64, mpp=1.0, ct=(32, 32, 16), ct_ch=(4, 8, 8, 16), e_ct=24,
                  e_clin=12, agg=(32, 16), fusion=16, vit=(48, 3, 2), tile_batch=64),
}
EDGES = [0, 6, 12, 18, 24, 30, 36, 42, 48]


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))


class ResNet50Layer3(nn.Module):
    """torchvision's ResNet-50 up to layer3 (3, 4, 6 bottlenecks), then a global average pool."""

    def __init__(self, base):
        super().__init__()
        layers = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = base
        for width, blocks, stride in [(base, 3, 1), (base * 2, 4, 2), (base * 4, 6, 2)]:
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.features = nn.Sequential(*layers)
        self.width = cin

    def forward(self, tiles):
        return self.features(tiles).mean(dim=(2, 3))


class ViTS16(nn.Module):
    """A ViT-S/16-shaped encoder (patch 16, pre-norm blocks); the class token's embedding."""

    def __init__(self, tile_px, width, heads, depth):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 16, 16)
        n = (tile_px // 16) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, width * 4, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.width = width

    def forward(self, tiles):
        x = self.patch(tiles).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.norm(self.blocks(x))[:, 0]


class GatedAttention(nn.Module):
    """CLAM-SB: h -> fc -> gated attention over the tiles -> attention-weighted mean."""

    def __init__(self, cin, hidden, attn):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU())
        self.a = nn.Sequential(nn.Linear(hidden, attn), nn.Tanh())
        self.b = nn.Sequential(nn.Linear(hidden, attn), nn.Sigmoid())
        self.c = nn.Linear(attn, 1)

    def forward(self, h):
        h = self.fc(h)
        a = torch.softmax(self.c(self.a(h) * self.b(h)).transpose(0, 1), dim=1)
        return a @ h, a.squeeze(0)


class CtEncoder(nn.Module):
    def __init__(self, ch, width):
        super().__init__()
        layers, cin = [], 1
        for c in ch:
            layers += [nn.Conv3d(cin, c, 3, 2, 1), nn.BatchNorm3d(c), nn.ReLU()]
            cin = c
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, width)

    def forward(self, ct):
        return self.fc(self.convs(ct).mean(dim=(2, 3, 4)))


class Fusion(nn.Module):
    def __init__(self, widths, hidden, k):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(sum(widths) + 3, hidden), nn.ReLU(), nn.Linear(hidden, k))

    def forward(self, ct, slide, clinical, mask):
        x = torch.cat([ct * mask[:, 0:1], slide * mask[:, 1:2], clinical * mask[:, 2:3], mask], dim=1)
        return torch.sigmoid(self.mlp(x))


def demo_clinical():
    """The demo package's [[clinical.features]] tables and the vector's width (docs/MODEL.md)."""
    text = (ROOT / "models/packages/demo/model.toml").read_text()
    tables = text[text.index("[[clinical.features]]"):]
    tables = tables[: tables.index("\n[", tables.rindex("[[clinical.features]]") + 1)]
    width, fields = 0, []
    for block in tables.split("[[clinical.features]]")[1:]:
        field = re.search(r'field = "([^"]+)"', block).group(1)
        kind = re.search(r'kind = "([^"]+)"', block).group(1)
        if kind in ("one_hot",):
            width += len(re.findall(r'"[^"]+"', re.search(r"levels = \[(.*)\]", block).group(1)))
        elif kind == "cut":
            width += len(re.search(r"at = \[(.*)\]", block).group(1).split(","))
        else:
            width += 1
        if field not in fields:
            fields.append(field)
    return tables.strip() + "\n", width + len(fields)


def calibrate_batchnorm(module, make_input, steps=4):
    """Seeded random weights, then BatchNorm statistics from random inputs (so activations keep
    a sane scale through 16 bottlenecks), then eval."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(make_input())
    module.eval()


def export(module, args, path, inputs, outputs, dynamic):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                      opset_version=17, do_constant_folding=True, dynamo=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="small")
    ap.add_argument("--tile", choices=["resnet50", "vit-s16"], default="resnet50")
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--reference", type=pathlib.Path)
    ap.add_argument("--seed", type=int, default=18)
    a = ap.parse_args()
    s = SCALES[a.scale]
    torch.manual_seed(a.seed)
    t = s["tile_px"]
    cx, cy, cz = s["ct"]
    clinical_toml, c = demo_clinical()
    k = len(EDGES) - 1

    tile = ResNet50Layer3(s["base"]) if a.tile == "resnet50" else ViTS16(t, *s["vit"])
    calibrate_batchnorm(tile, lambda: torch.randn(8, 3, t, t))
    agg = GatedAttention(tile.width, *s["agg"]).eval()
    ct = CtEncoder(s["ct_ch"], s["e_ct"])
    calibrate_batchnorm(ct, lambda: torch.rand(2, 1, cz, cy, cx))
    clin = nn.Sequential(nn.Linear(c, s["e_clin"] * 2), nn.ReLU(), nn.Linear(s["e_clin"] * 2, s["e_clin"])).eval()
    fusion = Fusion([s["e_ct"], s["agg"][0], s["e_clin"]], s["fusion"], k).eval()

    onnx_dir = a.out / "onnx"
    n = {0: "n"}
    with torch.no_grad():
        export(tile, (torch.randn(2, 3, t, t),), onnx_dir / "tile_encoder.onnx", ["tiles"], ["features"],
               {"tiles": n, "features": n})
        export(agg, (torch.randn(5, tile.width),), onnx_dir / "slide_aggregator.onnx", ["h"], ["slide", "A"],
               {"h": n, "A": n})
        export(ct, (torch.rand(1, 1, cz, cy, cx),), onnx_dir / "ct_encoder.onnx", ["ct"], ["ct_embedding"], None)
        export(clin, (torch.randn(1, c),), onnx_dir / "clinical_encoder.onnx", ["clinical"], ["clinical_embedding"],
               None)
        export(fusion, (torch.randn(1, s["e_ct"]), torch.randn(1, s["agg"][0]), torch.randn(1, s["e_clin"]),
                        torch.ones(1, 3)), onnx_dir / "fusion.onnx", ["ct", "slide", "clinical", "mask"],
               ["hazards"], None)

        # Reference cases: fixed inputs and PyTorch's outputs (fp32, CPU).
        g = torch.Generator().manual_seed(a.seed + 1)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = {}
        for i, (tiles_n, mask) in enumerate([(7, [1, 1, 1]), (3, [0, 1, 1]), (0, [1, 0, 1])]):
            x_ct = torch.rand(1, 1, cz, cy, cx, generator=g)
            x_tiles = (torch.rand(max(tiles_n, 1), 3, t, t, generator=g) - mean) / std
            x_clin = torch.randn(1, c, generator=g)
            m = torch.tensor([mask], dtype=torch.float32)
            h = tile(x_tiles)
            e_slide, att = agg(h) if tiles_n else (torch.zeros(1, s["agg"][0]), torch.zeros(0))
            e_ct = ct(x_ct) if mask[0] else torch.zeros(1, s["e_ct"])
            e_clin = clin(x_clin)
            ref.update({
                f"case{i}.ct": x_ct.reshape(cz, cy, cx), f"case{i}.tiles": x_tiles[:tiles_n],
                f"case{i}.clinical": x_clin.reshape(-1), f"case{i}.mask": m.reshape(-1),
                f"case{i}.tile_embeddings": h[:tiles_n], f"case{i}.tile_attention": att,
                f"case{i}.hazards": fusion(e_ct, e_slide, e_clin, m).reshape(-1),
            })
        from safetensors.torch import save_file
        reference = a.reference or a.out.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in ref.items()}, str(reference))

    arch = "resnet50-layer3" if a.tile == "resnet50" else "vit-s16"
    name = f"crlm-reference-{a.scale}-{a.tile}"
    toml = f'''# Reference package ({a.scale} scale): {arch} tile encoder + CLAM-SB gated attention + 3D CNN CT
# encoder + clinical MLP + fusion to 8 six-month hazards. SEEDED RANDOM WEIGHTS: timing and
# plumbing only, never a model of anything. Made by tools/reference_package.py --scale {a.scale}
# --tile {a.tile} --seed {a.seed} (PyTorch {torch.__version__}, torch.onnx.export, opset 17).
format = 2
name = "{name}"
version = "0.1.0"
architecture = "{arch} + clam-sb + conv3d + mlp"
intended_use = "Timing and plumbing reference with random weights. Not a model; never for any patient."
demo = true

[modalities]
allowed = [
    ["ct", "slide", "clinical"],
    ["ct", "clinical"],
    ["ct", "slide"],
    ["slide", "clinical"],
    ["ct"],
]

[ct]
spacing_mm = [1.5, 1.5, 2.5]
shape = [{cx}, {cy}, {cz}]
hu_window = [-160.0, 240.0]

[slide]
tile_px = {t}
microns_per_pixel = {s["mpp"]}
min_tissue = 0.5
max_tiles = "all"
sampling = "even"
tile_batch = {s["tile_batch"]}
tile_mean = [0.485, 0.456, 0.406]
tile_std = [0.229, 0.224, 0.225]

{clinical_toml}
[decision]
threshold = 0.5

[time]
output = "hazards"
edges_months = {EDGES}

[parts.tile_encoder]
file = "onnx/tile_encoder.onnx"
inputs = {{ tiles = "tiles" }}
outputs = {{ embeddings = "features" }}
widths = {{ embeddings = {tile.width} }}

[parts.slide_aggregator]
file = "onnx/slide_aggregator.onnx"
inputs = {{ embeddings = "h" }}
outputs = {{ embedding = "slide", attention = "A" }}

[parts.ct_encoder]
file = "onnx/ct_encoder.onnx"
inputs = {{ ct = "ct" }}
outputs = {{ embedding = "ct_embedding" }}

[parts.clinical_encoder]
file = "onnx/clinical_encoder.onnx"
inputs = {{ clinical = "clinical" }}
outputs = {{ embedding = "clinical_embedding" }}

[parts.fusion]
file = "onnx/fusion.onnx"
inputs = {{ ct = "ct", slide = "slide", clinical = "clinical", mask = "mask" }}
outputs = {{ output = "hazards" }}
'''
    (a.out / "model.toml").write_text(toml)
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"{a.out}: {name}, tile width {tile.width}, {size / 1e6:.1f} MB; sign with crlm model sign {a.out} --key KEY",
          file=sys.stderr)


if __name__ == "__main__":
    main()
