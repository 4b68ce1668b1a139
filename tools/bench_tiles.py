#!/usr/bin/env python3
"""Slide tile read+decode throughput: crlm against OpenSlide's read_region, same regions, same
thread count, same run.

Usage: /usr/bin/python3 bench_tiles.py CRLM_BIN SLIDE [--repeat 10] [--threads 1 2]
Regions are the slide's native level-0 tiles (whole tiles only), each read --repeat times.
Needs Debian's python3-openslide. Prints regions/s for each and the ratio, and crlm's peak RSS.
"""
import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import openslide


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
    for t in a.threads:
        def one(o):
            return s.read_region(o, 0, (tw, tw))

        start = time.perf_counter()
        if t == 1:
            for o in origins:
                one(o)
        else:
            with ThreadPoolExecutor(t) as ex:
                list(ex.map(one, origins))
        osl = len(origins) / (time.perf_counter() - start)
        out = subprocess.run(
            ["/usr/bin/time", "-f", "RSS %M", a.crlm, "wsi", "bench", a.slide, "--threads", str(t), "--origins", path],
            check=True, capture_output=True, text=True)
        ours = float(re.search(r"([0-9.]+) regions/s", out.stdout).group(1))
        rss = int(re.search(r"RSS (\d+)", out.stderr).group(1)) / 1024
        print(f"threads {t}: openslide {osl:7.0f} regions/s   crlm {ours:7.0f} regions/s   crlm/openslide {ours / osl:4.2f}   crlm peak RSS {rss:.0f} MB")
    os.unlink(path)


if __name__ == "__main__":
    main()
