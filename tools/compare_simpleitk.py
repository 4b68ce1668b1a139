#!/usr/bin/env python3
"""Compare `crlm ct volume` with SimpleITK's ImageSeriesReader on the same series.

Usage: compare_simpleitk.py CRLM_BIN SERIES_DIR [SERIES_DIR ...]
Prints one line per series and exits non-zero if voxels or geometry differ.
Voxels must be identical; spacing, origin and direction within 1e-4 (mm / cosine).
"""
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
import SimpleITK as sitk


def compare(crlm, series_dir):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(series_dir)
    reader.SetFileNames(names)
    img = reader.Execute()
    ref = sitk.GetArrayFromImage(img).astype(np.float64)  # z, y, x
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/v.nii"
        subprocess.run([crlm, "ct", "volume", series_dir, "--out", out], check=True, capture_output=True)
        nii = nib.load(out)
        ours = np.transpose(np.asarray(nii.dataobj).astype(np.float64), (2, 1, 0))
        affine = nii.affine  # RAS
    problems = []
    if ours.shape != ref.shape:
        problems.append(f"shape {ours.shape} vs {ref.shape}")
    else:
        diff = np.abs(ours - ref).max()
        if diff != 0:
            problems.append(f"voxels differ by up to {diff}")
    # SimpleITK geometry is LPS; ours is RAS in the NIfTI: negate x and y rows.
    lps = affine.copy()
    lps[0, :] *= -1
    lps[1, :] *= -1
    spacing = np.array(img.GetSpacing())
    direction = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin())
    ours_spacing = np.linalg.norm(lps[:3, :3], axis=0)
    ours_direction = lps[:3, :3] / ours_spacing
    if np.abs(ours_spacing - spacing).max() > 1e-4:
        problems.append(f"spacing {ours_spacing} vs {spacing}")
    if np.abs(ours_direction - direction).max() > 1e-4:
        problems.append(f"direction {ours_direction.tolist()} vs {direction.tolist()}")
    if np.abs(lps[:3, 3] - origin).max() > 1e-4:
        problems.append(f"origin {lps[:3, 3]} vs {origin}")
    status = "OK" if not problems else "DIFFERENT: " + "; ".join(problems)
    print(f"{series_dir}: {ref.shape[::-1]} voxels, {status}")
    return not problems


def main():
    crlm, dirs = sys.argv[1], sys.argv[2:]
    results = [compare(crlm, d) for d in dirs]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
