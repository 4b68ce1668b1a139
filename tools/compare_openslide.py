#!/usr/bin/env python3
"""Compare `crlm wsi region` with OpenSlide's read_region on the same slide and regions.

Usage: compare_openslide.py CRLM_BIN SLIDE [LEVEL:X:Y:W:H ...]
Without regions, a grid of 256x256 regions across level 0 (tile-straddling offsets) is used.
Prints the largest per-channel difference per region and exits non-zero above --tolerance
(default 2: JPEG decoders may round differently; lossless tiles must match exactly with 0).
Needs Debian's python3-openslide (run with /usr/bin/python3).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import openslide
from PIL import Image, ImageChops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crlm")
    ap.add_argument("slide")
    ap.add_argument("regions", nargs="*")
    ap.add_argument("--tolerance", type=int, default=2)
    a = ap.parse_args()
    slide = openslide.OpenSlide(a.slide)
    regions = []
    for r in a.regions:
        level, x, y, w, h = (int(v) for v in r.split(":"))
        regions.append((level, x, y, w, h))
    if not regions:
        w0, h0 = slide.level_dimensions[0]
        for y in range(37, h0 - 256, max(1, (h0 - 300) // 4)):
            for x in range(53, w0 - 256, max(1, (w0 - 300) // 4)):
                regions.append((0, x, y, 256, 256))
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for level, x, y, w, h in regions:
            out = os.path.join(tmp, "r.png")
            subprocess.run(
                [a.crlm, "wsi", "region", a.slide, "--level", str(level), "--x", str(x), "--y", str(y),
                 "--width", str(w), "--height", str(h), "--out", out],
                check=True, capture_output=True)
            ours = Image.open(out).convert("RGB")
            ref = slide.read_region((x, y), level, (w, h))
            if ref.getextrema()[3][0] < 255:
                ref_rgb = Image.new("RGB", ref.size, (255, 255, 255))
                ref_rgb.paste(ref, mask=ref.split()[3])
            else:
                ref_rgb = ref.convert("RGB")
            diff = max(hi for _, hi in ImageChops.difference(ours, ref_rgb).getextrema())
            worst = max(worst, diff)
            print(f"level {level} ({x},{y}) {w}x{h}: max abs diff {diff}")
    print(f"worst {worst} over {len(regions)} regions (tolerance {a.tolerance})")
    sys.exit(0 if worst <= a.tolerance else 1)


if __name__ == "__main__":
    main()
