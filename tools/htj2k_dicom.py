#!/usr/bin/env python3
"""Transcode a DICOM file's RGB frames to High-Throughput JPEG 2000 (HTJ2K), and write the same
file back with OpenJPEG's decode of those HTJ2K frames as uncompressed RGB: the fixtures and the
reference of the HTJ2K slide test (models/tests/models/slides.rs). No DICOM toolkit at hand
writes HTJ2K (DCMTK does not); OpenJPH (through imagecodecs) encodes, OpenJPEG (the C library,
also through imagecodecs) is the decoder crlm's is checked against.

Usage: htj2k_dicom.py SRC HTJ2K_OUT DECODED_OUT [--lossy]
  without --lossy: reversible 5/3 wavelet, transfer syntax 1.2.840.10008.1.2.4.201 (HTJ2K Lossless)
  with --lossy:    irreversible 9/7 wavelet, 1.2.840.10008.1.2.4.203 (HTJ2K)
Needs pydicom 3, numpy and imagecodecs (pip install pydicom imagecodecs).
"""
import argparse

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import HTJ2K, JPEG2000, ExplicitVRLittleEndian, HTJ2KLossless, JPEG2000Lossless


def frames_of(ds):
    px = ds.pixel_array
    return px if int(ds.get("NumberOfFrames", 1)) > 1 else px[np.newaxis, ...]


def mct_of(codestream):
    """The COD segment's multiple-component transform flag (1: RCT or ICT applied)."""
    cod = codestream.find(b"\xff\x52")
    # FF52, Lcod (2), Scod (1), progression (1), layers (2), MCT (1)
    return codestream[cod + 8] if cod >= 0 else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("htj2k_out")
    ap.add_argument("decoded_out")
    ap.add_argument("--lossy", action="store_true")
    ap.add_argument(
        "--classic", action="store_true",
        help="JPEG 2000 part 1 code blocks (OpenJPEG encodes; 1.2.840.10008.1.2.4.90/.91) instead of HTJ2K")
    a = ap.parse_args()

    ds = pydicom.dcmread(a.src)
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3, "RGB frames only"
    if a.classic:
        encoded = [
            imagecodecs.jpeg2k_encode(np.ascontiguousarray(f), level=None if a.lossy else 0, codecformat="j2k",
                                      reversible=not a.lossy)
            for f in frames_of(ds)
        ]
    else:
        encoded = [
            imagecodecs.htj2k_encode(np.ascontiguousarray(f), reversible=not a.lossy) for f in frames_of(ds)
        ]
    mct = mct_of(encoded[0])
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.PlanarConfiguration = 0
    if mct:
        ds.PhotometricInterpretation = "YBR_ICT" if a.lossy else "YBR_RCT"
    if a.lossy:
        ds.LossyImageCompression = "01"
    if a.classic:
        ds.file_meta.TransferSyntaxUID = JPEG2000 if a.lossy else JPEG2000Lossless
    else:
        ds.file_meta.TransferSyntaxUID = HTJ2K if a.lossy else HTJ2KLossless
    ds.save_as(a.htj2k_out, enforce_file_format=True)

    back = pydicom.dcmread(a.htj2k_out)
    decoded = np.stack([imagecodecs.jpeg2k_decode(f) for f in pydicom.encaps.generate_frames(back.PixelData)])
    back.PixelData = decoded.astype(np.uint8).tobytes()
    back["PixelData"].VR = "OB"
    back.PhotometricInterpretation = "RGB"
    back.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    back.save_as(a.decoded_out, enforce_file_format=True)
    print(f"{a.src}: {len(encoded)} frames, {sum(map(len, encoded))} bytes HTJ2K, MCT {mct}")


if __name__ == "__main__":
    main()
