//! Limits checked before allocating: a DICOM or TIFF header may claim gigantic dimensions.

use serde::{Deserialize, Serialize};

/// Upper bounds on what one input file may claim. Configurable (`[limits]` in the appliance config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest decoded pixel data of one DICOM file, in bytes (all frames).
    pub max_dicom_pixel_bytes: u64,
    /// Most frames in one (multi-frame) DICOM file.
    pub max_dicom_frames: u32,
    /// Largest width or height of one slide level, in pixels.
    pub max_slide_dimension: u64,
    /// Most tiles or strips in one slide level.
    pub max_slide_tiles: u64,
    /// Most IFDs (pages) followed in one TIFF.
    pub max_tiff_ifds: u32,
    /// Largest clinical file, in bytes.
    pub max_clinical_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_dicom_pixel_bytes: 2 << 30,
            max_dicom_frames: 4096,
            max_slide_dimension: 400_000,
            max_slide_tiles: 4_000_000,
            max_tiff_ifds: 64,
            max_clinical_bytes: 16 << 20,
        }
    }
}
