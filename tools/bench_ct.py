#!/usr/bin/env python3
"""CT series load benchmark: crlm against its peers in the same run, on the same page-cached files.

Usage: bench_ct.py CRLM_BIN [--slices 300] [--size 512] [--repeat 3] [--work DIR]

Times (best of --repeat):
  floor     copying the series' bytes into one file (the I/O floor)
  crlm      `crlm ct volume DIR --out v.nii` (recognise, decode, sort, HU, write NIfTI)
  simpleitk ImageSeriesReader + WriteImage(.nii)
  pydicom   pydicom.dcmread all + sort by position + numpy HU stack (no file written)
and prints each with its ratio to crlm.
"""
import argparse
import glob
import os
import shutil
import subprocess
import tempfile
import time


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("crlm")
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="crlm-bench-")
    series = os.path.join(work, f"ct_{a.size}_{a.slices}")
    if not os.path.isdir(series):
        subprocess.run([a.crlm, "synth", "ct", series, "--slices", str(a.slices), "--size", str(a.size)], check=True)
    files = sorted(glob.glob(os.path.join(series, "*.dcm")))
    total = sum(os.path.getsize(f) for f in files)
    for f in files:  # page cache
        with open(f, "rb") as fh:
            fh.read()
    out = os.path.join(work, "out")
    os.makedirs(out, exist_ok=True)

    def floor():
        with open(os.path.join(out, "copy.bin"), "wb") as w:
            for f in files:
                with open(f, "rb") as r:
                    shutil.copyfileobj(r, w)

    def crlm():
        subprocess.run([a.crlm, "ct", "volume", series, "--out", os.path.join(out, "crlm.nii")], check=True, capture_output=True)

    results = {"floor": best(floor, a.repeat), "crlm": best(crlm, a.repeat)}
    try:
        import SimpleITK as sitk

        def simpleitk():
            r = sitk.ImageSeriesReader()
            r.SetFileNames(r.GetGDCMSeriesFileNames(series))
            sitk.WriteImage(r.Execute(), os.path.join(out, "sitk.nii"))

        results["simpleitk"] = best(simpleitk, a.repeat)
    except ImportError:
        print("SimpleITK not installed: skipped")
    try:
        import numpy as np
        import pydicom

        def pyd():
            ds = [pydicom.dcmread(f) for f in files]
            n = np.cross(np.array(ds[0].ImageOrientationPatient[:3], float), np.array(ds[0].ImageOrientationPatient[3:], float))
            ds.sort(key=lambda d: float(np.dot(n, np.array(d.ImagePositionPatient, float))))
            vol = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
            return vol

        results["pydicom"] = best(pyd, a.repeat)
    except ImportError:
        print("pydicom/numpy not installed: skipped")
    print(f"series: {len(files)} slices {a.size}x{a.size}, {total / 1e6:.1f} MB, page-cached; best of {a.repeat}; {os.cpu_count()} CPUs")
    for k, v in results.items():
        print(f"{k:10s} {v:7.3f} s   crlm is {v / results['crlm']:5.2f}x faster than {k}" if k != "crlm" else f"{k:10s} {v:7.3f} s")


if __name__ == "__main__":
    main()
