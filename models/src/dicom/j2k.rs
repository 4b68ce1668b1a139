//! JPEG 2000 codestreams outside a DICOM image's own pixel data (slide tiles, 1-bit SEG frames)
//! go through the same pure-Rust openjp2 decoder as CT: the codestream is wrapped as the one
//! encapsulated fragment of a minimal DICOM object, so no second JPEG 2000 binding is needed.

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;

/// The transfer syntaxes whose frames are JPEG 2000 codestreams (Part 1 and HTJ2K).
pub(crate) fn is_j2k_transfer_syntax(uid: &str) -> bool {
    uid.starts_with("1.2.840.10008.1.2.4.9") || uid.starts_with("1.2.840.10008.1.2.4.20")
}

/// Check a JPEG 2000 codestream's image and components (its SIZ marker segment) against the
/// image it must fill, before any decoder sees it. dicom-rs's JPEG 2000 adapter writes each
/// component's samples into a buffer sized from Rows x Columns x SamplesPerPixel without
/// checking, and panics (found by fuzzing, target `roi`) when the codestream is larger or has
/// more components than the header says. A JP2 wrapper is looked through (the SIZ is found in
/// the first 4 KiB).
pub(crate) fn check_codestream(data: &[u8], cols: u32, rows: u32, samples: u16) -> Result<(), String> {
    const SOC_SIZ: [u8; 4] = [0xFF, 0x4F, 0xFF, 0x51];
    let start = data
        .windows(4)
        .take(4096)
        .position(|w| w == SOC_SIZ)
        .ok_or("no JPEG 2000 codestream (SOC and SIZ markers) at its start")?;
    let siz = data.get(start + 4..).unwrap_or(&[]);
    let be32 = |o: usize| siz.get(o..o + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let be16 = |o: usize| siz.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let short = || "JPEG 2000 SIZ marker cut short".to_string();
    let (xsiz, ysiz) = (be32(4).ok_or_else(short)?, be32(8).ok_or_else(short)?);
    let (xo, yo) = (be32(12).ok_or_else(short)?, be32(16).ok_or_else(short)?);
    let csiz = be16(36).ok_or_else(short)?;
    let (w, h) = (xsiz.saturating_sub(xo), ysiz.saturating_sub(yo));
    if (w, h) != (cols, rows) {
        return Err(format!("the JPEG 2000 codestream is {w}x{h}, the image {cols}x{rows}"));
    }
    if csiz == 0 || csiz > samples {
        return Err(format!("the JPEG 2000 codestream has {csiz} components, the image {samples} samples per pixel"));
    }
    for c in 0..usize::from(csiz) {
        let sub = siz.get(38 + 3 * c..41 + 3 * c).ok_or_else(short)?;
        let (dx, dy) = (u32::from(sub[1]), u32::from(sub[2]));
        if dx == 0 || dy == 0 {
            return Err(format!("JPEG 2000 component {c} has a subsampling of 0"));
        }
    }
    Ok(())
}

/// Check every codestream among a JPEG 2000 image's fragments (those that start one: a frame may
/// continue over more fragments) against the image; at least one must be there.
pub(crate) fn check_fragments(fragments: &[Vec<u8>], cols: u32, rows: u32, samples: u16) -> Result<(), String> {
    let mut found = false;
    for f in fragments {
        if f.windows(4).take(4096).any(|w| w == [0xFF, 0x4F, 0xFF, 0x51]) {
            check_codestream(f, cols, rows, samples)?;
            found = true;
        }
    }
    if found { Ok(()) } else { Err("no JPEG 2000 codestream in the pixel data".into()) }
}

/// Decode an 8-bit (or narrower: `bits_stored` 1 to 8) JPEG 2000 codestream of `cols` x `rows`
/// with `samples` components (1 grey, 3 RGB) into interleaved bytes.
pub(crate) fn decode_j2k_8bit(
    raw: &[u8],
    cols: u32,
    rows: u32,
    samples: u16,
    bits_stored: u16,
) -> Result<Vec<u8>, String> {
    check_codestream(raw, cols, rows, samples)?;
    let rows = u16::try_from(rows).map_err(|_| "image too tall".to_string())?;
    let cols = u16::try_from(cols).map_err(|_| "image too wide".to_string())?;
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [samples])));
    let photometric = if samples == 3 { "RGB" } else { "MONOCHROME2" };
    obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from(photometric)));
    if samples > 1 {
        obj.put(DataElement::new(tags::PLANAR_CONFIGURATION, VR::US, dicom_value!(U16, [0])));
    }
    obj.put(DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [rows])));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, dicom_value!(U16, [cols])));
    obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [8])));
    obj.put(DataElement::new(tags::BITS_STORED, VR::US, dicom_value!(U16, [bits_stored])));
    obj.put(DataElement::new(tags::HIGH_BIT, VR::US, dicom_value!(U16, [bits_stored.saturating_sub(1)])));
    obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [0])));
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new_fragments(vec![raw.to_vec()])),
    ));
    let file = obj
        .with_meta(
            dicom_object::FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.4.91")
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
                .media_storage_sop_instance_uid("2.25.1"),
        )
        .map_err(|e| e.to_string())?;
    let decoded = file.decode_pixel_data().map_err(|e| e.to_string())?;
    decoded.to_vec().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8 x 8 grey, lossless codestream (OpenJPEG 2.5.4 through Pillow).
    const GREY_8X8: [u8; 168] = [
        255, 79, 255, 81, 0, 41, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 1, 7, 1, 1, 255, 82, 0, 12, 0, 0, 0, 1, 0, 3, 4, 4, 0, 1, 255, 92, 0, 13, 64, 64, 72, 72, 80,
        72, 72, 80, 72, 72, 80, 255, 100, 0, 37, 0, 1, 67, 114, 101, 97, 116, 101, 100, 32, 98, 121, 32, 79, 112, 101,
        110, 74, 80, 69, 71, 32, 118, 101, 114, 115, 105, 111, 110, 32, 50, 46, 53, 46, 52, 255, 144, 0, 10, 0, 0, 0,
        0, 0, 53, 0, 1, 255, 147, 199, 212, 4, 5, 239, 193, 243, 130, 159, 128, 16, 4, 63, 4, 95, 192, 249, 1, 71, 218,
        6, 13, 1, 11, 61, 134, 192, 124, 33, 195, 234, 3, 0, 34, 26, 15, 3, 127, 235, 255, 217,
    ];

    #[test]
    fn a_codestream_that_fits_decodes() {
        let px = decode_j2k_8bit(&GREY_8X8, 8, 8, 1, 8).unwrap();
        assert_eq!(px.len(), 64);
        assert_eq!(px.get(1).copied(), Some(4));
    }

    /// Found by fuzzing (target `roi`): a codestream larger than the image (or with more
    /// components) made dicom-rs's adapter index past its buffer: now an error, before decoding.
    #[test]
    fn a_codestream_larger_than_its_image_is_an_error_not_a_panic() {
        let e = decode_j2k_8bit(&GREY_8X8, 4, 4, 1, 8).unwrap_err();
        assert!(e.contains("8x8, the image 4x4"), "{e}");
        let mut two = GREY_8X8;
        two[41] = 2; // Csiz 2 in a one-sample image
        assert!(decode_j2k_8bit(&two, 8, 8, 1, 8).unwrap_err().contains("2 components"));
        assert!(check_codestream(&GREY_8X8[..30], 8, 8, 1).unwrap_err().contains("cut short"));
        assert!(check_codestream(b"not a codestream", 8, 8, 1).is_err());
        assert!(check_fragments(&[GREY_8X8.to_vec()], 8, 8, 1).is_ok());
        assert!(check_fragments(&[vec![0u8; 10]], 8, 8, 1).is_err());
    }
}
