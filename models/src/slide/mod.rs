//! Whole-slide images: TIFF/BigTIFF/Aperio SVS headers, DICOM whole-slide series
//! ([`dicom_wsi`]), tile and region reading, and a pyramidal TIFF writer.
//!
//! [`tiff::read_slide_header`] walks the IFD chain by hand with every count bounded, and checks
//! that every tile's offset and byte count lie inside the file and are non-zero: a slide still
//! being copied (or allocated at full length by Windows `CopyFile`) is not accepted.
//! Associated images (label, macro) are recognised so that they are never decoded into results:
//! they carry patient identifiers.

#[cfg(any(test, feature = "write"))]
pub mod dicom_writer;
pub mod dicom_wsi;
pub mod read;
pub mod sample;
pub mod tiff;
pub mod tissue;
#[cfg(any(test, feature = "write"))]
pub mod writer;

#[cfg(any(test, feature = "write"))]
pub use dicom_writer::{DicomSlideSpec, write_dicom_slide};
pub use tiff::{SlideFormat, SlideHeader, SlideLevel, read_slide_header, read_slide_header_file, sniff_tiff};
#[cfg(any(test, feature = "write"))]
pub use writer::{SlideSpec, write_pyramidal_tiff};

#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    #[error("I/O error reading slide: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a TIFF file (no II*/MM* or BigTIFF signature)")]
    NotTiff,
    #[error("broken TIFF structure: {0}; the file is damaged or still being written, re-export it")]
    Broken(String),
    #[error("slide claims {what} = {value}, above the limit {limit}; refusing before allocating memory")]
    OverLimit { what: &'static str, value: u64, limit: u64 },
    #[error("slide data is incomplete: {0}")]
    Incomplete(String),
    #[error("slide has no tiled pyramid level (strip-only TIFFs are not whole-slide images)")]
    NoPyramid,
    #[error("slide compression {0} is not supported (JPEG, JPEG 2000, LZW, Deflate or none are)")]
    UnsupportedCompression(u16),
    #[error("DICOM whole-slide image: {0}")]
    Dicom(String),
    #[error("could not encode slide: {0}")]
    Encode(String),
}
