//! CT series to a Hounsfield-unit volume in patient coordinates (LPS), and NIfTI-1 output.
//!
//! [`volume::load_series`] decodes every slice or frame (single-frame CT and Enhanced multi-frame
//! CT), straight into whole-HU `i16` voxels when the rescale is integral ([`Voxels`]). Codecs: dicom-pixeldata for uncompressed data in every byte order, deflated, RLE, 8-bit
//! JPEG, JPEG lossless and JPEG 2000 (pure-Rust openjp2); our own decoder for 12-bit JPEG
//! Extended ([`crate::dicom::jpeg12`]); CharLS for JPEG-LS. It applies
//! Rescale Slope/Intercept per slice and sorts slices by their position along the slice normal
//! from ImageOrientationPatient (never by InstanceNumber). It reports gaps, non-uniform spacing,
//! duplicates, gantry tilt and padding (left at its rescaled value, as SimpleITK does).
//! [`nifti::write_nifti`] writes the volume with qform and sform. [`preprocess::preprocess`]
//! samples the model's box (shape, spacing, HU window) around the region of interest, which
//! [`roi::read_roi`] reads from a DICOM SEG or RTSTRUCT when the export has one.

pub mod nifti;
pub mod preprocess;
pub mod roi;
pub mod volume;

pub use nifti::write_nifti;
pub use volume::{CtVolume, GeometryReport, Voxels, load_series};

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("{file}: {source}")]
    Dicom { file: String, source: crate::dicom::DicomError },
    #[error("{file}: pixel data cannot be decoded: {message}")]
    Decode { file: String, message: String },
    #[error("{file}: the region of interest cannot be used: {message}")]
    Roi { file: String, message: String },
    #[error("the series is unusable: {0}")]
    Geometry(String),
    #[error("volume of {voxels} voxels is above the limit {limit}; refusing before allocating")]
    TooLarge { voxels: u64, limit: u64 },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
