#!/usr/bin/env python3
"""Slide tile read+decode throughput: crlm against OpenSlide's read_region, same regions, same
thread count, same run.

Usage: /usr/bin/python3 bench_tiles.py CRLM_BIN SLIDE [--repeat 10] [--threads 1 2]
Regions are the slide's native level-0 tiles (whole tiles only), each read --repeat times.
Needs Debian's python3-openslide. Prints regions/s for each and the ratio, and crlm's peak RSS.

The third peer is bare libjpeg-turbo: Pillow (Debian's python3-pil, linked to libjpeg-turbo)
decoding the same level-0 JPEG tile streams, tables spliced in, from memory, with no region
assembly: the floor the issue measures against. It needs a classic-TIFF JPEG level 0 (SVS) or a
DICOM slide whose named file is its JPEG level 0 (then run it with a Python whose OpenSlide is 4.x:
PyPI's openslide-bin; pydicom reads the frames).
"""
import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import io
import struct

import openslide


def dicom_frames(path):
    """A DICOM slide level's JPEG frames (pydicom), or None."""
    try:
        import pydicom
        from pydicom.encaps import generate_frames
    except ImportError:
        return None
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.4.50":
        return None
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def jpeg_tile_streams(path):
    """Level 0's JPEG tiles (first IFD of a classic little-endian TIFF, tables spliced in; or a
    DICOM slide level file's frames)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[128:132] == b"DICM":
        return dicom_frames(path)
    if data[:4] != b"II*\0":
        return None
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    tags = {}
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 7: 1, 16: 8}
    for i in range(n):
        tag, typ, count, value = struct.unpack_from("<HHII", data, ifd + 2 + 12 * i)
        size = sizes.get(typ, 1) * count
        at = ifd + 2 + 12 * i + 8 if size <= 4 else value
        if typ == 3:
            tags[tag] = struct.unpack_from(f"<{count}H", data, at)
        elif typ == 4:
            tags[tag] = struct.unpack_from(f"<{count}I", data, at)
        else:
            tags[tag] = data[at:at + size]
    if tags.get(259, (0,))[0] != 7 or 324 not in tags:
        return None
    tables = tags.get(347, b"\xff\xd8\xff\xd9")
    streams = [tables[:-2] + data[o + 2:o + c] for o, c in zip(tags[324], tags[325])]
    if tags.get(262, (0,))[0] == 2:
        # Photometric RGB (Aperio): libjpeg must decode the stream as RGB, as OpenSlide and crlm
        # do (no colour transform), or the floor would be a YCbCr decode of other work.
        streams = [as_rgb(b) for b in streams]
    return streams


def as_rgb(stream):
    """Component ids 'R','G','B' in the frame and scan headers: libjpeg then takes it as RGB."""
    b = bytearray(stream)
    i, ids = 2, []
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker, length = b[i + 1], struct.unpack(">H", b[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xC3 and b[i + 9] == 3:
            for c in range(3):
                ids.append(b[i + 10 + 3 * c])
                b[i + 10 + 3 * c] = b"RGB"[c]
        elif marker == 0xDA:
            for c in range(b[i + 4]):
                at = i + 5 + 2 * c
                if b[at] in ids:
                    b[at] = b"RGB"[ids.index(b[at])]
            break
        i += 2 + length
    return bytes(b)


def per_second(fn, items, threads):
    """Items handled per second by `fn` on `threads` Python threads (inline for one)."""
    start = time.perf_counter()
    if threads == 1:
        for x in items:
            fn(x)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(fn, items))
    return len(items) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crlm")
    ap.add_argument("slide")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    s = openslide.OpenSlide(a.slide)
    tw = int(s.properties.get("openslide.level[0].tile-width", 256))
    w, h = s.level_dimensions[0]
    origins = [(x * tw, y * tw) for y in range(h // tw) for x in range(w // tw)] * a.repeat
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(origins, f)
        path = f.name
    print(f"{a.slide}: {len(origins)} regions of {tw} px ({len(origins) // a.repeat} tiles x {a.repeat}), {os.cpu_count()} CPUs")
    streams = jpeg_tile_streams(a.slide)
    turbo = None
    try:
        from PIL import Image
    except ImportError:
        Image = None
    for t in a.threads:
        if streams and Image:
            # Whole tiles only (as the regions), the same count as the regions.
            work = (streams * (len(origins) // len(streams) + 1))[:len(origins)]

            def decode(b):
                im = Image.open(io.BytesIO(b))
                im.load()

            turbo = per_second(decode, work, t)

        osl = per_second(lambda o: s.read_region(o, 0, (tw, tw)), origins, t)
        out = subprocess.run(
            ["/usr/bin/time", "-f", "RSS %M", a.crlm, "wsi", "bench", a.slide, "--threads", str(t), "--origins", path],
            check=True, capture_output=True, text=True)
        ours = float(re.search(r"([0-9.]+) regions/s", out.stdout).group(1))
        rss = int(re.search(r"RSS (\d+)", out.stderr).group(1)) / 1024
        line = f"threads {t}: openslide {osl:7.0f} regions/s   crlm {ours:7.0f} regions/s   crlm/openslide {ours / osl:4.2f}"
        if turbo:
            line += f"   bare libjpeg-turbo {turbo:7.0f} tiles/s   crlm/turbo {ours / turbo:4.2f}"
        print(line + f"   crlm peak RSS {rss:.0f} MB")
    os.unlink(path)


if __name__ == "__main__":
    main()
