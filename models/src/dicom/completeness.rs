//! Is the pixel data all there? A stable file size is no proof (Windows `CopyFile` allocates
//! the full length first), so the Pixel Data element is located and its declared length (or its
//! fragment items) must lie inside the file, with a length that matches Rows x Columns x frames
//! x bits for native encodings. Pixels are never read.

use super::header::{DicomHeader, DicomLayout};
use super::{DicomError, ts};
use crate::limits::Limits;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Where the pixel data lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelDataExtent {
    /// Offset of the value (after the element header).
    pub value_offset: u64,
    /// Bytes of native pixel data, or of all fragments for encapsulated data.
    pub value_bytes: u64,
    /// Fragment items (excluding the basic offset table); 0 for native data.
    pub fragments: u32,
}

const PIXEL_DATA_LE: [u8; 4] = [0xE0, 0x7F, 0x10, 0x00];
const PIXEL_DATA_BE: [u8; 4] = [0x7F, 0xE0, 0x00, 0x10];
/// How far into the file the Pixel Data element header is looked for.
const MAX_HEADER_SCAN: u64 = 64 << 20;

/// Check that the pixel data described by `header` is completely present in the file.
pub fn check_pixel_data(path: &Path, header: &DicomHeader, limits: &Limits) -> Result<PixelDataExtent, DicomError> {
    check_pixel_data_file(&File::open(path)?, header, limits)
}

/// As [`check_pixel_data`], on a file the caller opened.
pub fn check_pixel_data_file(
    file: &File,
    header: &DicomHeader,
    limits: &Limits,
) -> Result<PixelDataExtent, DicomError> {
    let mut file = file;
    let file_len = file.metadata()?.len();
    if header.transfer_syntax_uid == ts::DEFLATED_EXPLICIT_VR_LE {
        return check_deflated(file, header, limits);
    }
    file.seek(SeekFrom::Start(0))?;
    let expected = header.expected_native_bytes(limits)?;
    let enc = header.encoding();
    let pattern = if enc.big_endian { PIXEL_DATA_BE } else { PIXEL_DATA_LE };
    let start: u64 = match header.layout {
        Some(DicomLayout::Part10) => 132,
        _ => 0,
    };
    let scan_len = file_len.min(MAX_HEADER_SCAN);
    let mut buf = Vec::with_capacity(usize::try_from(scan_len.min(1 << 20)).unwrap_or(1 << 20));
    let mut offset_done: u64 = 0;
    let mut short_candidate: Option<u32> = None;
    // Read the head in growing chunks until a plausible Pixel Data element header is found.
    // The Pixel Data header is usually within the first few KB: start small, grow if not.
    let mut chunk = 16 * 1024u64;
    loop {
        let want = (offset_done + chunk).min(scan_len);
        let add = want - offset_done;
        let mut part = Vec::new();
        (&mut file).take(add).read_to_end(&mut part)?;
        buf.extend_from_slice(&part);
        let search_from = usize::try_from(start).unwrap_or(0).min(buf.len());
        let mut i = search_from;
        while let Some(pos) = find(&buf[i..], &pattern) {
            let p = i + pos;
            match parse_candidate(&buf, p, enc.explicit_vr, enc.big_endian) {
                // A nested image (an icon in a sequence) has its own, shorter Pixel Data: skip it.
                Some((_, value_len))
                    if value_len != u32::MAX
                        && !header.is_encapsulated()
                        && expected.is_some_and(|e| u64::from(value_len) < e) =>
                {
                    short_candidate.get_or_insert(value_len);
                    i = p + 1;
                }
                Some((hdr_len, value_len)) => {
                    let value_offset = p as u64 + hdr_len as u64;
                    return finish(&mut file, file_len, value_offset, value_len, expected, header, enc.big_endian);
                }
                None => i = p + 1,
            }
            if i >= buf.len() {
                break;
            }
        }
        offset_done = want;
        if offset_done >= scan_len {
            break;
        }
        chunk *= 2;
    }
    if let (Some(len), Some(exp)) = (short_candidate, expected) {
        return Err(DicomError::Incomplete(format!(
            "Pixel Data declares {len} bytes but Rows x Columns x frames x bits need {exp}"
        )));
    }
    if header.rows.is_none() {
        return Err(DicomError::Incomplete("the file has no image (no Rows/Columns and no Pixel Data)".into()));
    }
    Err(DicomError::Incomplete(format!(
        "no Pixel Data element found in {file_len} bytes; the file is truncated or still being written"
    )))
}

fn find(hay: &[u8], needle: &[u8; 4]) -> Option<usize> {
    hay.windows(4).position(|w| w == needle)
}

/// At `p` there is a Pixel Data tag: parse its header. Returns (header length, value length).
fn parse_candidate(buf: &[u8], p: usize, explicit: bool, be: bool) -> Option<(usize, u32)> {
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = buf.get(o..o + 4)?.try_into().ok()?;
        Some(if be { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    };
    if explicit {
        let vr = buf.get(p + 4..p + 6)?;
        if !matches!(vr, b"OB" | b"OW" | b"UN" | b"OF" | b"OD" | b"OL" | b"OV") {
            return None;
        }
        if buf.get(p + 6..p + 8)? != [0, 0] {
            return None;
        }
        Some((12, u32_at(p + 8)?))
    } else {
        Some((8, u32_at(p + 4)?))
    }
}

fn finish(
    file: &mut &File,
    file_len: u64,
    value_offset: u64,
    value_len: u32,
    expected: Option<u64>,
    header: &DicomHeader,
    be: bool,
) -> Result<PixelDataExtent, DicomError> {
    if value_len != u32::MAX {
        let len = u64::from(value_len);
        if let Some(exp) = expected
            && !header.is_encapsulated()
            && len < exp
        {
            return Err(DicomError::Incomplete(format!(
                "Pixel Data declares {len} bytes but Rows x Columns x frames x bits need {exp}"
            )));
        }
        if value_offset + len > file_len {
            return Err(DicomError::Incomplete(format!(
                "Pixel Data needs {len} bytes from offset {value_offset} but the file has {} (truncated or still copying)",
                file_len.saturating_sub(value_offset)
            )));
        }
        return Ok(PixelDataExtent { value_offset, value_bytes: len, fragments: 0 });
    }
    // Encapsulated: walk items until the sequence delimiter, each inside the file.
    let mut pos = value_offset;
    let mut items = 0u32;
    let mut bytes = 0u64;
    let mut non_empty = 0u32;
    loop {
        if pos + 8 > file_len {
            return Err(DicomError::Incomplete(format!(
                "pixel data fragments end at byte {pos} without a sequence delimiter (truncated or still copying)"
            )));
        }
        let mut h = [0u8; 8];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut h)?;
        let (g, e, len) = if be {
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            )
        } else {
            (
                u16::from_le_bytes([h[0], h[1]]),
                u16::from_le_bytes([h[2], h[3]]),
                u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            )
        };
        match (g, e) {
            (0xFFFE, 0xE0DD) => break,
            (0xFFFE, 0xE000) => {
                let len = u64::from(len);
                if pos + 8 + len > file_len {
                    return Err(DicomError::Incomplete(format!(
                        "fragment {items} needs {len} bytes but the file ends first (truncated or still copying)"
                    )));
                }
                if items > 0 {
                    bytes += len;
                    if len > 0 {
                        non_empty += 1;
                    }
                }
                items += 1;
                if items > 1_000_000 {
                    return Err(DicomError::OverLimit {
                        what: "pixel data fragments",
                        value: u64::from(items),
                        limit: 1_000_000,
                    });
                }
                pos += 8 + len;
            }
            _ => {
                return Err(DicomError::Incomplete(format!(
                    "unexpected element ({g:04X},{e:04X}) inside encapsulated pixel data at byte {pos}"
                )));
            }
        }
    }
    let frames = header.number_of_frames.unwrap_or(1).max(1);
    if non_empty == 0 || non_empty < frames.min(1) {
        return Err(DicomError::Incomplete("encapsulated pixel data has no non-empty fragment".into()));
    }
    Ok(PixelDataExtent { value_offset, value_bytes: bytes, fragments: items.saturating_sub(1) })
}

/// Deflated data sets cannot be walked by hand; parse them fully (inflate) and check the length.
fn check_deflated(file: &File, header: &DicomHeader, limits: &Limits) -> Result<PixelDataExtent, DicomError> {
    let expected = header.expected_native_bytes(limits)?;
    let mut reader = file;
    reader.seek(SeekFrom::Start(128))?;
    // Inflated, the data set is the header plus the pixel data the header declares.
    let cap = crate::memory::read_cap(expected.unwrap_or(0).saturating_add(file.metadata()?.len()));
    let obj = crate::memory::with_allocation_cap(cap, || {
        dicom_object::OpenFileOptions::new()
            .read_preamble(dicom_object::file::ReadPreamble::Never)
            .from_reader(std::io::BufReader::new(reader))
    })
    .map_err(|e| DicomError::Incomplete(format!("deflated data set does not parse to the end: {e}")))?;
    let el = obj
        .element_opt(dicom_dictionary_std::tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| DicomError::Incomplete("deflated data set has no Pixel Data".into()))?;
    let len = el.to_bytes().map(|b| b.len() as u64).unwrap_or(0);
    if let Some(exp) = expected
        && len < exp
    {
        return Err(DicomError::Incomplete(format!("Pixel Data holds {len} bytes, {exp} needed")));
    }
    Ok(PixelDataExtent { value_offset: 0, value_bytes: len, fragments: 0 })
}
