//! CT preprocessing for the model: a box of the model's shape and spacing, centred on the region
//! of interest, sampled trilinearly from the HU volume, clipped and normalised to the HU window.
//!
//! Only the output voxels are computed (crop first, then resample: the work is proportional to
//! the output, not to the scan). The box is aligned with the volume's own axes (row, column,
//! slice normal) in patient space. Samples outside the scan are air (-1024 HU). Parameters come
//! from the model package.

use super::{CtVolume, Voxels};
use serde::{Deserialize, Serialize};

/// What the model package asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtPreprocessSpec {
    /// Output spacing along the volume's x (row), y (column) and z (normal) axes, mm.
    pub spacing_mm: [f64; 3],
    /// Output shape (x, y, z) in voxels.
    pub shape: [usize; 3],
    /// HU window [low, high]: values are clipped to it and mapped to 0..1.
    pub hu_window: [f32; 2],
    /// The segments (SEG SegmentLabel) or structures (RTSTRUCT ROIName) whose box centres the
    /// crop when the export has a segmentation, case-insensitive; empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roi_labels: Vec<String>,
}

/// A box in volume voxel indices, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct IndexBox {
    pub min: [usize; 3],
    pub max: [usize; 3],
}

/// Where the box came from (reported with every prediction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoiSource {
    /// A DICOM SEG in the export.
    Segmentation,
    /// An RTSTRUCT (contours) in the export.
    StructureSet,
    /// The body, found from HU (no segmentation given).
    Body,
    /// The whole volume (no body found).
    Whole,
}

/// The model's CT input: `shape` voxels, x fastest, values 0..1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CtTensor {
    pub shape: [usize; 3],
    #[serde(skip)]
    pub data: Vec<f32>,
    pub roi: RoiSource,
    /// Box centre in volume voxel indices.
    pub centre_index: [f64; 3],
}

/// Air in HU: what lies outside the scan.
const AIR_HU: f32 = -1024.0;

/// The body's bounding box: voxels above -500 HU (soft tissue and denser). `None` if none.
pub fn body_box(vol: &CtVolume) -> Option<IndexBox> {
    match &vol.hu {
        Voxels::Int16(hu) => body_box_of(vol, hu, |v| v > -500),
        Voxels::Float32(hu) => body_box_of(vol, hu, |v| v > -500.0),
    }
}

fn body_box_of<T: Copy>(vol: &CtVolume, hu: &[T], body: impl Fn(T) -> bool) -> Option<IndexBox> {
    let (nx, ny) = (vol.columns, vol.rows);
    let mut min = [usize::MAX; 3];
    let mut max = [0usize; 3];
    for (r, row) in hu.chunks_exact(nx.max(1)).enumerate() {
        let (y, z) = (r % ny.max(1), r / ny.max(1));
        for (x, v) in row.iter().enumerate() {
            if body(*v) {
                for (a, i) in [x, y, z].into_iter().enumerate() {
                    min[a] = min[a].min(i);
                    max[a] = max[a].max(i);
                }
            }
        }
    }
    (min[0] != usize::MAX).then_some(IndexBox { min, max })
}

/// Sample the model's box around `roi` (or the body, or the whole volume).
pub fn preprocess(vol: &CtVolume, spec: &CtPreprocessSpec, roi: Option<(IndexBox, RoiSource)>) -> CtTensor {
    let (source, bx) = match roi {
        Some((b, source)) => (source, b),
        None => match body_box(vol) {
            Some(b) => (RoiSource::Body, b),
            None => (
                RoiSource::Whole,
                IndexBox { min: [0, 0, 0], max: [vol.columns - 1, vol.rows - 1, vol.slices.saturating_sub(1)] },
            ),
        },
    };
    let centre = [0, 1, 2].map(|a| (bx.min[a] + bx.max[a]) as f64 / 2.0);
    let [sx, sy, sz] = spec.shape;
    let [lo, hi] = spec.hu_window;
    let scale = if hi > lo { 1.0 / (hi - lo) } else { 0.0 };
    // Output voxel step in volume voxels, per axis.
    let step = [0, 1, 2].map(|a| spec.spacing_mm[a] / vol.spacing[a].max(1e-6));
    let mut data = Vec::with_capacity(sx * sy * sz);
    for k in 0..sz {
        let fz = centre[2] + (k as f64 - (sz as f64 - 1.0) / 2.0) * step[2];
        for j in 0..sy {
            let fy = centre[1] + (j as f64 - (sy as f64 - 1.0) / 2.0) * step[1];
            for i in 0..sx {
                let fx = centre[0] + (i as f64 - (sx as f64 - 1.0) / 2.0) * step[0];
                let hu = trilinear(vol, fx, fy, fz);
                data.push(((hu.clamp(lo, hi) - lo) * scale).clamp(0.0, 1.0));
            }
        }
    }
    CtTensor { shape: spec.shape, data, roi: source, centre_index: centre }
}

/// HU at a continuous voxel position; air outside the volume.
fn trilinear(vol: &CtVolume, x: f64, y: f64, z: f64) -> f32 {
    let (nx, ny, nz) = (vol.columns as f64, vol.rows as f64, vol.slices as f64);
    if x < 0.0 || y < 0.0 || z < 0.0 || x > nx - 1.0 || y > ny - 1.0 || z > nz - 1.0 {
        return AIR_HU;
    }
    let (x0, y0, z0) = (x.floor() as usize, y.floor() as usize, z.floor() as usize);
    let (x1, y1, z1) = ((x0 + 1).min(vol.columns - 1), (y0 + 1).min(vol.rows - 1), (z0 + 1).min(vol.slices - 1));
    let (dx, dy, dz) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32, (z - z0 as f64) as f32);
    let v = |x, y, z| vol.at(x, y, z);
    let c00 = v(x0, y0, z0) * (1.0 - dx) + v(x1, y0, z0) * dx;
    let c10 = v(x0, y1, z0) * (1.0 - dx) + v(x1, y1, z0) * dx;
    let c01 = v(x0, y0, z1) * (1.0 - dx) + v(x1, y0, z1) * dx;
    let c11 = v(x0, y1, z1) * (1.0 - dx) + v(x1, y1, z1) * dx;
    let c0 = c00 * (1.0 - dy) + c10 * dy;
    let c1 = c01 * (1.0 - dy) + c11 * dy;
    c0 * (1.0 - dz) + c1 * dz
}
