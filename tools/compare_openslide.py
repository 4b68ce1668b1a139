#!/usr/bin/env python3
"""Compare `crlm wsi region` with OpenSlide's read_region on the same slide and regions.

Usage: compare_openslide.py CRLM_BIN SLIDE [LEVEL:X:Y:W:H ...]
Without regions, a grid of 256x256 regions across level 0 (tile-straddling offsets) is used.
Prints the largest per-channel difference per region and exits non-zero above --tolerance
(default 0: crlm decodes JPEG tiles with libjpeg-turbo, as OpenSlide does, so pixels are identical).
Needs Debian's python3-openslide (run with /usr/bin/python3).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import openslide
from PIL import Image, ImageChops


def libjpeg_ycc_to_rgb(img):
    """YCbCr to RGB exactly as libjpeg's jdcolor.c (16-bit fixed point, its rounding)."""
    px = list(img.getdata())
    fix = lambda x: int(x * 65536 + 0.5)
    half = 1 << 15
    out = []
    for y, cb, cr in px:
        cb -= 128
        cr -= 128
        r = y + ((fix(1.40200) * cr + half) >> 16)
        g = y + ((-fix(0.34414) * cb + half - fix(0.71414) * cr) >> 16)
        b = y + ((fix(1.77200) * cb + half) >> 16)
        out.append(tuple(min(255, max(0, v)) for v in (r, g, b)))
    res = Image.new("RGB", img.size)
    res.putdata(out)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crlm")
    ap.add_argument("slide")
    ap.add_argument("regions", nargs="*")
    ap.add_argument("--tolerance", type=int, default=0)
    ap.add_argument(
        "--reference-ycbcr", action="store_true",
        help="OpenSlide returned the JPEG frames' YCbCr unconverted (OpenSlide 4 on DICOM frames labelled RGB "
             "that hold JFIF YCbCr): convert its pixels with libjpeg's own YCbCr->RGB before comparing")
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
            if a.reference_ycbcr:
                converted = libjpeg_ycc_to_rgb(ref.convert("RGB"))
                converted.putalpha(ref.split()[3])
                ref = converted
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
