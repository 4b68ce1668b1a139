//! DICOM: header reading (never pixel decoding), completeness checks, and a CT series writer.
//!
//! Ingest reads only headers: [`header::read_header`] stops before Pixel Data, and
//! [`completeness::check_pixel_data`] proves the pixel data is fully present by walking its
//! element header (and fragment items) against the file length, without reading the pixels.

pub mod completeness;
pub mod guard;
pub mod header;
pub(crate) mod j2k;
pub mod jpeg12;
pub(crate) mod jpeg_frame;
pub mod rle;
#[cfg(any(test, feature = "write"))]
pub mod writer;

pub use completeness::{PixelDataExtent, check_pixel_data, check_pixel_data_file};
pub use header::{DicomHeader, DicomLayout, FramePlane, read_header, read_header_file, read_prefix, sniff_dicom};
#[cfg(any(test, feature = "write"))]
pub use writer::{CtSeriesSpec, write_ct_series, write_enhanced_ct, write_segmentation, write_structure_set};

/// Deterministic DICOM UID under the 2.25 (UUID-derived) root.
pub fn uid_from(seed: &str) -> String {
    let h = crate::sha256_hex(seed.as_bytes());
    let v = h.get(..32).and_then(|x| u128::from_str_radix(x, 16).ok()).unwrap_or(1) >> 2;
    format!("2.25.{v}")
}

/// Transfer syntax UIDs this crate names.
pub mod ts {
    pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
    pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
    pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
    pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
    /// JPEG Extended (processes 2 and 4): 12-bit CT goes through [`super::jpeg12`].
    pub const JPEG_EXTENDED_12BIT: &str = "1.2.840.10008.1.2.4.51";
    /// RLE Lossless: grey frames go through [`super::rle`].
    pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
}

/// SOP Class UIDs this crate names.
pub mod sop_class {
    pub const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
    pub const ENHANCED_CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
    pub const SEGMENTATION: &str = "1.2.840.10008.5.1.4.1.1.66.4";
    pub const RT_STRUCTURE_SET: &str = "1.2.840.10008.5.1.4.1.1.481.3";
    /// VL Whole Slide Microscopy Image: a level (or label, overview, thumbnail) of a digital slide.
    pub const VL_WHOLE_SLIDE_MICROSCOPY: &str = "1.2.840.10008.5.1.4.1.1.77.1.6";
}

/// Why a DICOM file could not be used. Messages say what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("I/O error reading DICOM: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a DICOM file (no 'DICM' marker and no recognisable data set at the start)")]
    NotDicom,
    #[error("DICOM header could not be parsed: {0}; the file is damaged or still being written, re-export it")]
    Parse(String),
    #[error("DICOM claims {what} = {value}, above the limit {limit}; refusing before allocating memory")]
    OverLimit { what: &'static str, value: u64, limit: u64 },
    #[error("DICOM pixel data is incomplete: {0}")]
    Incomplete(String),
}

/// Little/big endian and explicit/implicit VR: enough to walk element headers by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub(crate) fn for_transfer_syntax(uid: &str) -> Encoding {
        match uid.trim_end_matches('\0').trim() {
            ts::IMPLICIT_VR_LE => Encoding { explicit_vr: false, big_endian: false },
            ts::EXPLICIT_VR_BE => Encoding { explicit_vr: true, big_endian: true },
            _ => Encoding { explicit_vr: true, big_endian: false },
        }
    }
}
