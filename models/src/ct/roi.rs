//! The region of interest from a DICOM SEG or RTSTRUCT in the export: the bounding box of the
//! chosen segments (or structures) in the CT volume's voxel indices.
//!
//! Everything is done in patient coordinates (LPS): each SEG frame's occupied pixels are placed
//! by the frame's own plane position, orientation and spacing, RTSTRUCT contour points are
//! already patient coordinates, and the points are mapped into the volume through the inverse
//! of its affine. So a SEG on another grid (cropped, resampled, another frame order) still lands
//! in the right place, as long as it shares the CT's frame of reference (checked by the caller).

use super::CtError;
use super::preprocess::{IndexBox, RoiSource};
use super::volume::{CtVolume, open_object};
use crate::dicom::header::{floats, int, items, text};
use crate::dicom::{DicomHeader, sop_class};
use crate::limits::Limits;
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;
use serde::Serialize;
use std::path::Path;

/// A region of interest read from a segmentation, in volume voxel indices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionOfInterest {
    pub bbox: IndexBox,
    pub source: RoiSource,
    /// The segments (SEG) or structures (RTSTRUCT) the box covers.
    pub labels: Vec<String>,
    /// Whether part of the region lay outside the CT volume (the box is clipped to it).
    pub clipped: bool,
}

/// Read the region of interest in `path` (a SEG or RTSTRUCT whose header is `header`) and place
/// it in `vol`. `wanted` names the segments or structures to use (case-insensitive); empty
/// means all of them.
///
/// Its pixel data is checked against `limits` before anything is decoded: the decoded frames and
/// the one-byte-a-pixel mask of a frame (found by fuzzing: a 2.5 KB SEG claiming 65,535 x
/// 65,535-pixel frames took 2.3 GB).
pub fn read_roi(
    path: &Path,
    header: &DicomHeader,
    vol: &CtVolume,
    wanted: &[String],
    limits: &Limits,
) -> Result<RegionOfInterest, CtError> {
    let fail = |m: String| CtError::Roi { file: path.display().to_string(), message: m };
    header.expected_native_bytes(limits).map_err(|e| fail(e.to_string()))?;
    let plane = u64::from(header.rows.unwrap_or(0)) * u64::from(header.columns.unwrap_or(0));
    if plane > limits.max_dicom_pixel_bytes {
        return Err(fail(format!(
            "a {}x{} frame is over limits.max_dicom_pixel_bytes ({}) as a mask",
            header.columns.unwrap_or(0),
            header.rows.unwrap_or(0),
            limits.max_dicom_pixel_bytes
        )));
    }
    let obj = open_object(path, header).map_err(&fail)?;
    let sop = header.sop_class_uid.as_deref().unwrap_or("");
    let modality = header.modality.as_deref().unwrap_or("");
    let (points, labels, source) = if sop == sop_class::SEGMENTATION || modality == "SEG" {
        let (p, l) = seg_points(&obj, header, wanted).map_err(&fail)?;
        (p, l, RoiSource::Segmentation)
    } else if sop == sop_class::RT_STRUCTURE_SET || modality == "RTSTRUCT" {
        let (p, l) = rtstruct_points(&obj, wanted).map_err(&fail)?;
        (p, l, RoiSource::StructureSet)
    } else {
        return Err(fail("neither a DICOM SEG nor an RTSTRUCT".into()));
    };
    let (bbox, clipped) = index_box(vol, &points)
        .ok_or_else(|| fail(format!("the region ({}) lies outside the CT volume", labels.join(", "))))?;
    Ok(RegionOfInterest { bbox, source, labels, clipped })
}

/// Segment numbers and labels to use: those named in `wanted`, or all.
fn choose(
    available: impl Iterator<Item = (i64, String)>,
    wanted: &[String],
    what: &str,
) -> Result<Vec<(i64, String)>, String> {
    let available: Vec<(i64, String)> = available.collect();
    if available.is_empty() {
        return Err(format!("no {what}s in the file"));
    }
    if wanted.is_empty() {
        return Ok(available);
    }
    let chosen: Vec<(i64, String)> =
        available.iter().filter(|(_, l)| wanted.iter().any(|w| w.eq_ignore_ascii_case(l))).cloned().collect();
    if chosen.is_empty() {
        let names: Vec<&str> = available.iter().map(|(_, l)| l.as_str()).collect();
        return Err(format!("no {what} named {} (the file has: {})", wanted.join(" or "), names.join(", ")));
    }
    Ok(chosen)
}

type Points = Vec<[f64; 3]>;

/// The patient-space corners of the occupied pixels of every chosen segment's frames.
fn seg_points(
    obj: &dicom_object::DefaultDicomObject,
    h: &DicomHeader,
    wanted: &[String],
) -> Result<(Points, Vec<String>), String> {
    let segments = items(obj, tags::SEGMENT_SEQUENCE).iter().map(|s| {
        let n = int::<i64>(s, tags::SEGMENT_NUMBER).unwrap_or(0);
        (n, text(s, tags::SEGMENT_LABEL).unwrap_or_else(|| format!("segment {n}")))
    });
    let chosen = choose(segments, wanted, "segment")?;
    let (rows, cols) = (usize::from(h.rows.unwrap_or(0)), usize::from(h.columns.unwrap_or(0)));
    if rows == 0 || cols == 0 || h.frames.is_empty() {
        return Err("no frames with plane positions (Rows, Columns, per-frame functional groups)".into());
    }
    let bits = h.bits_allocated.unwrap_or(1);
    let fractional = text(obj, tags::SEGMENTATION_TYPE).as_deref() == Some("FRACTIONAL");
    // A fractional value counts when it is at least half the maximum (probability >= 0.5).
    let max_fraction = int::<i64>(obj, tags::MAXIMUM_FRACTIONAL_VALUE).unwrap_or(255).max(1);
    let threshold = if fractional { (max_fraction + 1) / 2 } else { 1 };
    let pixel_data = obj.element(tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    let (native_bytes, fragments) = if h.is_encapsulated() {
        (None, pixel_data.value().fragments())
    } else {
        (Some(pixel_data.to_bytes().map_err(|e| format!("pixel data unreadable: {e}"))?), None)
    };
    // The JPEG decoder allocates what a stream's frame header claims: every stream must be the
    // frame's size before any is decoded.
    if let Some(f) = fragments
        && crate::dicom::jpeg_frame::is_jpeg_transfer_syntax(&h.transfer_syntax_uid)
    {
        crate::dicom::jpeg_frame::check_fragments(f, cols as u32, rows as u32, 1)?;
    }
    let plane = rows * cols;
    let mut points = Vec::new();
    let mut mask = vec![false; plane];
    for (k, fp) in h.frames.iter().enumerate() {
        let Some(segment) = fp.segment else { continue };
        if !chosen.iter().any(|(n, _)| *n == i64::from(segment)) {
            continue;
        }
        match &native_bytes {
            Some(bytes) if bits == 1 => {
                // Native frames are packed bit after bit, LSB first, and need not start on a byte.
                if (k * plane + plane).div_ceil(8) > bytes.len() {
                    return Err(format!("pixel data ends before frame {}", k + 1));
                }
                unpack_bits(bytes, k * plane, &mut mask);
            }
            Some(bytes) if bits == 8 => {
                let frame =
                    bytes.get(k * plane..(k + 1) * plane).ok_or(format!("pixel data ends before frame {}", k + 1))?;
                for (m, v) in mask.iter_mut().zip(frame) {
                    *m = i64::from(*v) >= threshold;
                }
            }
            Some(_) => return Err(format!("BitsAllocated {bits} in a segmentation (1 or 8 expected)")),
            None if bits == 1 && matches!(h.transfer_syntax_uid.as_str(), RLE_LOSSLESS | DEFLATED_IMAGE_FRAME) => {
                let fragment = frame_fragment(fragments, h.frames.len(), k)?;
                let packed = packed_frame(fragment, &h.transfer_syntax_uid, plane.div_ceil(8))
                    .map_err(|e| format!("frame {}: {e}", k + 1))?;
                unpack_bits(&packed, 0, &mut mask);
            }
            None if bits == 1 && h.transfer_syntax_uid.starts_with("1.2.840.10008.1.2.4.9") => {
                // 1-bit JPEG 2000 frames: dicom-pixeldata refuses BitsAllocated 1, so the frame's
                // codestream is decoded as 1-bit-deep 8-bit samples.
                let fragment = frame_fragment(fragments, h.frames.len(), k)?;
                let values = crate::dicom::j2k::decode_j2k_8bit(fragment, cols as u32, rows as u32, 1, 1)
                    .map_err(|e| format!("frame {}: JPEG 2000: {e}", k + 1))?;
                if values.len() != plane {
                    return Err(format!("frame {} decoded to {} samples, {plane} expected", k + 1, values.len()));
                }
                for (m, v) in mask.iter_mut().zip(&values) {
                    *m = *v != 0;
                }
            }
            None => {
                if crate::dicom::j2k::is_j2k_transfer_syntax(&h.transfer_syntax_uid) {
                    let fragment = frame_fragment(fragments, h.frames.len(), k)?;
                    crate::dicom::j2k::check_codestream(fragment, cols as u32, rows as u32, 1)
                        .map_err(|e| format!("frame {}: {e}", k + 1))?;
                }
                let decoded = obj.decode_pixel_data_frame(k as u32).map_err(|e| {
                    format!("frame {} cannot be decoded [transfer syntax {}]: {e}", k + 1, h.transfer_syntax_uid)
                })?;
                let values: Vec<u8> = decoded.to_vec().map_err(|e| e.to_string())?;
                if values.len() != plane {
                    return Err(format!("frame {} decoded to {} samples, {plane} expected", k + 1, values.len()));
                }
                // Decoders give 1-bit samples as 0/1 or 0/255: any set value counts.
                let t = if bits == 1 { 1 } else { threshold };
                for (m, v) in mask.iter_mut().zip(&values) {
                    *m = i64::from(*v) >= t;
                }
            }
        }
        let Some((r0, r1, c0, c1)) = occupied(&mask, rows, cols) else { continue };
        let (Some(pos), Some(o)) = (fp.position, fp.orientation.or(h.image_orientation_patient)) else {
            return Err(format!("frame {} has no plane position or orientation", k + 1));
        };
        let ps = fp.pixel_spacing.or(h.pixel_spacing).unwrap_or([1.0, 1.0]);
        // Pixel (c, r) is at pos + c * col_spacing * row_dir + r * row_spacing * col_dir.
        for (r, c) in [(r0, c0), (r0, c1), (r1, c0), (r1, c1)] {
            let (r, c) = (r as f64, c as f64);
            points.push([0, 1, 2].map(|a| pos[a] + c * ps[1] * o[a] + r * ps[0] * o[3 + a]));
        }
    }
    if points.is_empty() {
        return Err(format!(
            "the chosen segment(s) ({}) are empty",
            chosen.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok((points, chosen.into_iter().map(|(_, l)| l).collect()))
}

/// Frame `k`'s codestream: encapsulated frames are read one fragment per frame.
fn frame_fragment(fragments: Option<&[Vec<u8>]>, frames: usize, k: usize) -> Result<&[u8], String> {
    fragments
        .filter(|f| f.len() == frames)
        .and_then(|f| f.get(k))
        .map(Vec::as_slice)
        .ok_or_else(|| "encapsulated pixel data without one fragment per frame".to_string())
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const DEFLATED_IMAGE_FRAME: &str = "1.2.840.10008.1.2.8.1";

/// Set `mask` from bits packed LSB first, starting at bit `first`.
fn unpack_bits(bytes: &[u8], first: usize, mask: &mut [bool]) {
    for (i, m) in mask.iter_mut().enumerate() {
        let bit = first + i;
        *m = bytes[bit / 8] >> (bit % 8) & 1 == 1;
    }
}

/// The packed bits of one encapsulated 1-bit frame, `len` bytes. RLE Lossless keeps them in one
/// PackBits segment; Deflated Image Frame Compression deflates them (raw deflate, RFC 1951).
/// dicom-pixeldata (and pydicom) decode neither for 1-bit data. Output never exceeds `len`.
fn packed_frame(fragment: &[u8], ts_uid: &str, len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len);
    if ts_uid == DEFLATED_IMAGE_FRAME {
        use std::io::Read;
        flate2::read::DeflateDecoder::new(fragment)
            .take(len as u64)
            .read_to_end(&mut out)
            .map_err(|e| format!("deflate: {e}"))?;
    } else {
        let word = |i: usize| fragment.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let (Some(segments), Some(start)) = (word(0), word(4)) else {
            return Err("RLE header truncated".into());
        };
        if segments != 1 {
            return Err(format!("RLE with {segments} segments for 1-bit data (1 expected)"));
        }
        let mut i = start;
        while out.len() < len && i < fragment.len() {
            let n = fragment[i] as i8;
            i += 1;
            if n >= 0 {
                let run = fragment.get(i..i + n as usize + 1).ok_or("RLE literal run past the end")?;
                out.extend_from_slice(run);
                i += run.len();
            } else if n != -128 {
                let b = *fragment.get(i).ok_or("RLE repeat past the end")?;
                out.extend(std::iter::repeat_n(b, (1 - isize::from(n)) as usize));
                i += 1;
            }
        }
        out.truncate(len);
    }
    if out.len() < len {
        return Err(format!("decoded {} bytes, {len} expected", out.len()));
    }
    Ok(out)
}

/// Rows and columns spanned by the set pixels: (first row, last row, first column, last column).
fn occupied(mask: &[bool], rows: usize, cols: usize) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    for r in 0..rows {
        let row = &mask[r * cols..(r + 1) * cols];
        let (Some(first), Some(last)) = (row.iter().position(|m| *m), row.iter().rposition(|m| *m)) else {
            continue;
        };
        b = Some(match b {
            None => (r, r, first, last),
            Some((r0, _, c0, c1)) => (r0, r, c0.min(first), c1.max(last)),
        });
    }
    b
}

/// The contour points of every chosen structure.
fn rtstruct_points(obj: &dicom_object::DefaultDicomObject, wanted: &[String]) -> Result<(Points, Vec<String>), String> {
    let rois = items(obj, tags::STRUCTURE_SET_ROI_SEQUENCE).iter().map(|s| {
        let n = int::<i64>(s, tags::ROI_NUMBER).unwrap_or(0);
        (n, text(s, tags::ROI_NAME).unwrap_or_else(|| format!("ROI {n}")))
    });
    let chosen = choose(rois, wanted, "structure")?;
    let mut points = Vec::new();
    for contour_set in items(obj, tags::ROI_CONTOUR_SEQUENCE) {
        let n = int::<i64>(contour_set, tags::REFERENCED_ROI_NUMBER).unwrap_or(0);
        if !chosen.iter().any(|(c, _)| *c == n) {
            continue;
        }
        for contour in items(contour_set, tags::CONTOUR_SEQUENCE) {
            let data = floats(contour, tags::CONTOUR_DATA).unwrap_or_default();
            if !data.len().is_multiple_of(3) {
                return Err(format!("ContourData of ROI {n} has {} values, not a multiple of 3", data.len()));
            }
            points.extend(data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]));
        }
    }
    if points.is_empty() {
        return Err(format!(
            "the chosen structure(s) ({}) have no contour points",
            chosen.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok((points, chosen.into_iter().map(|(_, l)| l).collect()))
}

/// The voxel-index box holding `points` (patient coordinates), clipped to the volume; `None`
/// when it misses the volume entirely. Also says whether clipping happened.
fn index_box(vol: &CtVolume, points: &[[f64; 3]]) -> Option<(IndexBox, bool)> {
    let a = vol.affine_lps();
    let m = [0, 1, 2].map(|i| [a[i][0], a[i][1], a[i][2]]);
    let inv = invert3(m)?;
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in points {
        let d = [p[0] - a[0][3], p[1] - a[1][3], p[2] - a[2][3]];
        for i in 0..3 {
            let v = inv[i][0] * d[0] + inv[i][1] * d[1] + inv[i][2] * d[2];
            lo[i] = lo[i].min(v);
            hi[i] = hi[i].max(v);
        }
    }
    let n = [vol.columns, vol.rows, vol.slices].map(|n| n as f64 - 1.0);
    // Half a voxel of tolerance: a contour on a slice's plane is inside that slice.
    if (0..3).any(|i| hi[i] < -0.5 || lo[i] > n[i] + 0.5) {
        return None;
    }
    let clipped = (0..3).any(|i| lo[i] < -0.5 || hi[i] > n[i] + 0.5);
    let min = [0, 1, 2].map(|i| lo[i].round().clamp(0.0, n[i]) as usize);
    let max = [0, 1, 2].map(|i| hi[i].round().clamp(0.0, n[i]) as usize);
    Some((IndexBox { min, max }, clipped))
}

fn invert3(m: [[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let c = |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    Some([
        [c(1, 1, 2, 2) / det, -c(0, 1, 2, 2) / det, c(0, 1, 1, 2) / det],
        [-c(1, 0, 2, 2) / det, c(0, 0, 2, 2) / det, -c(0, 0, 1, 2) / det],
        [c(1, 0, 2, 1) / det, -c(0, 0, 2, 1) / det, c(0, 0, 1, 1) / det],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_of_a_sheared_affine() {
        let m = [[0.7, 0.0, 0.3], [0.0, 0.7, 0.0], [0.0, 0.0, 2.0]];
        let inv = invert3(m).expect("invertible");
        let product = [0, 1, 2].map(|i| [0, 1, 2].map(|j| (0..3).map(|k| m[i][k] * inv[k][j]).sum::<f64>()));
        for (i, row) in product.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{product:?}");
            }
        }
        assert!(invert3([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 0.0, 1.0]]).is_none());
    }

    #[test]
    fn damaged_1bit_frames_are_refused_with_the_reason() {
        let rle = |body: &[u8]| {
            let mut f = vec![0u8; 64];
            f[0] = 1;
            f[4] = 64;
            f.extend_from_slice(body);
            f
        };
        // A literal run of 4 bytes with only 2 present; a repeat with no byte; too short.
        assert!(packed_frame(&rle(&[3, 1, 2]), RLE_LOSSLESS, 4).unwrap_err().contains("literal run past the end"));
        assert!(packed_frame(&rle(&[0xFE]), RLE_LOSSLESS, 4).unwrap_err().contains("repeat past the end"));
        assert!(packed_frame(&rle(&[0xFD, 7]), RLE_LOSSLESS, 8).unwrap_err().contains("decoded 4 bytes, 8 expected"));
        assert_eq!(packed_frame(&rle(&[0xFD, 7, 1, 9, 8]), RLE_LOSSLESS, 6).unwrap(), vec![7, 7, 7, 7, 9, 8]);
        let mut two_segments = rle(&[0]);
        two_segments[0] = 2;
        assert!(packed_frame(&two_segments, RLE_LOSSLESS, 4).unwrap_err().contains("2 segments"));
        assert!(packed_frame(&[1, 0], RLE_LOSSLESS, 4).unwrap_err().contains("RLE header truncated"));
        assert!(packed_frame(b"not deflate at all", DEFLATED_IMAGE_FRAME, 4).unwrap_err().contains("deflate"));
    }

    #[test]
    fn occupied_rows_and_columns() {
        let mut mask = vec![false; 20];
        assert_eq!(occupied(&mask, 4, 5), None);
        mask[5 + 3] = true;
        mask[3 * 5 + 1] = true;
        assert_eq!(occupied(&mask, 4, 5), Some((1, 3, 1, 3)));
    }
}
