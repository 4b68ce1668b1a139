//! CT series to a Hounsfield-unit volume in patient coordinates (LPS), and NIfTI-1 output.
//!
//! [`volume::load_series`] decodes every slice (dicom-pixeldata: uncompressed in all byte orders,
//! deflated, RLE, JPEG baseline/extended 8-bit, JPEG lossless, JPEG 2000 through the pure-Rust
//! openjp2; JPEG-LS with feature `jpeg-ls`), applies Rescale Slope/Intercept per slice, sorts slices by their position along the slice normal computed from
//! ImageOrientationPatient (never by InstanceNumber), and reports gaps, non-uniform spacing,
//! duplicates, gantry tilt and padding (left at its rescaled value, as SimpleITK does). [`nifti::write_nifti`] writes the volume with qform and sform.
//! [`preprocess::preprocess`] samples the model's box (shape, spacing, HU window) around the
//! region of interest.

pub mod nifti;
pub mod preprocess;
pub mod volume;

pub use nifti::write_nifti;
pub use volume::{CtVolume, GeometryReport, load_series};

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("{file}: {source}")]
    Dicom { file: String, source: crate::dicom::DicomError },
    #[error("{file}: pixel data cannot be decoded: {message}")]
    Decode { file: String, message: String },
    #[error("the series is unusable: {0}")]
    Geometry(String),
    #[error("volume of {voxels} voxels is above the limit {limit}; refusing before allocating")]
    TooLarge { voxels: u64, limit: u64 },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
