//! JPEG 2000 codestreams outside a DICOM image's own pixel data (slide tiles, 1-bit SEG frames)
//! go through the same pure-Rust openjp2 decoder as CT: the codestream is wrapped as the one
//! encapsulated fragment of a minimal DICOM object, so no second JPEG 2000 binding is needed.

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_pixeldata::PixelDecoder;

/// Decode an 8-bit (or narrower: `bits_stored` 1 to 8) JPEG 2000 codestream of `cols` x `rows`
/// with `samples` components (1 grey, 3 RGB) into interleaved bytes.
pub(crate) fn decode_j2k_8bit(
    raw: &[u8],
    cols: u32,
    rows: u32,
    samples: u16,
    bits_stored: u16,
) -> Result<Vec<u8>, String> {
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
