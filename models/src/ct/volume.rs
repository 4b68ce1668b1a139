//! Loading a CT series into a HU volume with its geometry.

use super::CtError;
use crate::dicom::{self, DicomLayout, ts};
use crate::limits::Limits;
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use serde::Serialize;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most voxels in one volume (512 x 512 x 2048), checked before the volume is allocated.
pub const MAX_VOXELS: u64 = 512 * 512 * 2048;

/// What was noticed about the series' geometry. Warnings do not stop loading; errors do.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GeometryReport {
    pub slices: usize,
    /// Distance between consecutive slices along the normal (mm), in sorted order.
    pub slice_gaps_mm: Vec<f64>,
    pub uniform_spacing: bool,
    /// (index after which slices are missing, estimated number missing).
    pub missing_slices: Vec<(usize, usize)>,
    /// Sorted indices of slices sharing a position with the previous one (dropped).
    pub duplicate_positions: Vec<usize>,
    /// Angle between the slice-to-slice step and the slice normal (degrees); 0 without tilt.
    pub gantry_tilt_degrees: f64,
    /// Voxels equal to PixelPaddingValue (outside the scan field) and their HU value.
    pub padding_voxels: usize,
    pub padding_hu: Option<f32>,
    pub warnings: Vec<String>,
}

/// A CT volume in Hounsfield units. Voxel (x, y, z) is at `hu[(z * rows + y) * columns + x]`;
/// x runs along the row direction, y along the column direction, z along the slice normal.
#[derive(Debug, Clone)]
pub struct CtVolume {
    pub columns: usize,
    pub rows: usize,
    pub slices: usize,
    /// Spacing along x, y (PixelSpacing[1], PixelSpacing[0]) and z (mean slice distance), mm.
    pub spacing: [f64; 3],
    /// ImagePositionPatient of the first sorted slice (LPS, mm).
    pub origin: [f64; 3],
    /// Row direction, column direction, slice normal (unit vectors, LPS).
    pub direction: [[f64; 3]; 3],
    /// Mean step between slice origins (LPS, mm): along the normal unless the gantry was tilted.
    pub slice_step: [f64; 3],
    pub hu: Vec<f32>,
    /// SOPInstanceUIDs in sorted order (empty strings where the export blanked them).
    pub sop_instance_uids: Vec<String>,
    /// The files in sorted order.
    pub files: Vec<PathBuf>,
    pub report: GeometryReport,
}

struct Slice {
    path: PathBuf,
    sop: String,
    position: [f64; 3],
    orientation: [f64; 6],
    rows: usize,
    columns: usize,
    spacing: [f64; 2],
    hu: Vec<f32>,
    padding_voxels: usize,
    padding_hu: Option<f32>,
    thickness: Option<f64>,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn norm(a: [f64; 3]) -> [f64; 3] {
    let l = dot(a, a).sqrt();
    if l > 0.0 { [a[0] / l, a[1] / l, a[2] / l] } else { a }
}

/// Load the CT images among `files` (one series) into a volume.
pub fn load_series(files: &[PathBuf], limits: &Limits) -> Result<CtVolume, CtError> {
    if files.is_empty() {
        return Err(CtError::Geometry("no files".into()));
    }
    // Headers first (guarded, cheap): check the claimed size before decoding anything.
    let mut headers = Vec::with_capacity(files.len());
    for f in files {
        let h =
            dicom::read_header(f, limits).map_err(|e| CtError::Dicom { file: f.display().to_string(), source: e })?;
        headers.push(h);
    }
    let (rows, cols) = (headers[0].rows.unwrap_or(0) as u64, headers[0].columns.unwrap_or(0) as u64);
    let frames: u64 = headers.iter().map(|h| u64::from(h.number_of_frames.unwrap_or(1).max(1))).sum();
    let voxels = rows * cols * frames;
    if voxels > MAX_VOXELS {
        return Err(CtError::TooLarge { voxels, limit: MAX_VOXELS });
    }
    let mut slices = Vec::with_capacity(files.len());
    for (f, h) in files.iter().zip(&headers) {
        if h.number_of_frames.unwrap_or(1) > 1 {
            return Err(CtError::Geometry(format!(
                "{}: multi-frame (Enhanced) CT is not supported yet; export the series as single-frame CT images",
                f.display()
            )));
        }
        slices.push(decode_slice(f, h.layout)?);
    }
    assemble(slices)
}

/// Open the whole object (after the header guard) and decode its pixels to HU.
fn decode_slice(path: &Path, layout: Option<DicomLayout>) -> Result<Slice, CtError> {
    let file_s = path.display().to_string();
    let derr = |m: String| CtError::Decode { file: file_s.clone(), message: m };
    let obj = match layout {
        Some(DicomLayout::Part10) => OpenFileOptions::new()
            .read_preamble(ReadPreamble::Always)
            .open_file(path)
            .map_err(|e| derr(e.to_string()))?,
        Some(DicomLayout::MetaWithoutPreamble) => OpenFileOptions::new()
            .read_preamble(ReadPreamble::Never)
            .open_file(path)
            .map_err(|e| derr(e.to_string()))?,
        Some(DicomLayout::RawDataset { explicit_vr, big_endian }) => {
            let ts_uid = match (explicit_vr, big_endian) {
                (false, _) => ts::IMPLICIT_VR_LE,
                (true, false) => ts::EXPLICIT_VR_LE,
                (true, true) => ts::EXPLICIT_VR_BE,
            };
            let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
            let tsx = dicom_encoding::TransferSyntaxIndex::get(&registry, ts_uid)
                .ok_or_else(|| derr("unknown transfer syntax".into()))?;
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(0))?;
            let ds = InMemDicomObject::read_dataset_with_ts(BufReader::new(f), tsx).map_err(|e| derr(e.to_string()))?;
            let sop_class = text(&ds, tags::SOP_CLASS_UID).unwrap_or_else(|| crate::dicom::sop_class::CT_IMAGE.into());
            let sop = text(&ds, tags::SOP_INSTANCE_UID).unwrap_or_else(|| "2.25.1".into());
            ds.with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(ts_uid)
                    .media_storage_sop_class_uid(sop_class)
                    .media_storage_sop_instance_uid(sop),
            )
            .map_err(|e| derr(e.to_string()))?
        }
        None => return Err(derr("not DICOM".into())),
    };
    let ts_uid = obj.meta().transfer_syntax().to_string();
    let decoded = obj.decode_pixel_data().map_err(|e| {
        let hint = match ts_uid.as_str() {
            "1.2.840.10008.1.2.4.51" => {
                " (12-bit JPEG Extended: no Rust decoder handles it; ask for a lossless or JPEG 2000 export)"
            }
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => " (JPEG-LS: build crlm with feature `jpeg-ls`)",
            _ => "",
        };
        derr(format!("{e} [transfer syntax {ts_uid}]{hint}"))
    })?;
    let stored: Vec<f64> = decoded
        .to_vec_with_options::<f64>(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
        .map_err(|e| derr(e.to_string()))?;
    let num = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_multi_float64().ok());
    let slope = num(tags::RESCALE_SLOPE).and_then(|v| v.first().copied()).unwrap_or(1.0);
    let intercept = num(tags::RESCALE_INTERCEPT).and_then(|v| v.first().copied()).unwrap_or(0.0);
    let padding = obj.element_opt(tags::PIXEL_PADDING_VALUE).ok().flatten().and_then(|e| e.to_int::<i64>().ok());
    // Padding (outside the scan field) keeps its rescaled value, as ITK/SimpleITK do; it is
    // counted so the report says it is there, and the model's HU window clips it.
    let padding_voxels = padding.map_or(0, |p| stored.iter().filter(|&&v| v == p as f64).count());
    let padding_hu = padding.map(|p| (p as f64 * slope + intercept) as f32);
    let hu: Vec<f32> = stored.iter().map(|&v| (v * slope + intercept) as f32).collect();
    let position = num(tags::IMAGE_POSITION_PATIENT)
        .and_then(|v| <[f64; 3]>::try_from(v.as_slice()).ok())
        .ok_or_else(|| derr("no ImagePositionPatient".into()))?;
    let orientation = num(tags::IMAGE_ORIENTATION_PATIENT)
        .and_then(|v| <[f64; 6]>::try_from(v.as_slice()).ok())
        .ok_or_else(|| derr("no ImageOrientationPatient".into()))?;
    let spacing = num(tags::PIXEL_SPACING).and_then(|v| <[f64; 2]>::try_from(v.as_slice()).ok()).unwrap_or([1.0, 1.0]);
    let rows = decoded.rows() as usize;
    let columns = decoded.columns() as usize;
    if decoded.samples_per_pixel() != 1 || hu.len() != rows * columns {
        return Err(derr(format!("expected one grey sample per pixel, got {} samples", decoded.samples_per_pixel())));
    }
    Ok(Slice {
        path: path.to_path_buf(),
        sop: text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        position,
        orientation,
        rows,
        columns,
        spacing,
        hu,
        padding_voxels,
        padding_hu,
        thickness: num(tags::SLICE_THICKNESS).and_then(|v| v.first().copied()).filter(|t| *t > 0.0),
    })
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let v = obj.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let t = v.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!t.is_empty()).then(|| t.to_string())
}

fn assemble(mut slices: Vec<Slice>) -> Result<CtVolume, CtError> {
    let first = &slices[0];
    let (rows, columns, o) = (first.rows, first.columns, first.orientation);
    for s in &slices {
        if s.rows != rows || s.columns != columns {
            return Err(CtError::Geometry(format!(
                "mixed image sizes: {}x{} and {}x{} ({})",
                columns,
                rows,
                s.columns,
                s.rows,
                s.path.display()
            )));
        }
        if s.orientation.iter().zip(o.iter()).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(CtError::Geometry(format!("mixed orientations within the series ({})", s.path.display())));
        }
        if (s.spacing[0] - first.spacing[0]).abs() > 1e-4 || (s.spacing[1] - first.spacing[1]).abs() > 1e-4 {
            return Err(CtError::Geometry(format!("mixed pixel spacing within the series ({})", s.path.display())));
        }
    }
    let r = norm([o[0], o[1], o[2]]);
    let c = norm([o[3], o[4], o[5]]);
    let n = norm(cross(r, c));
    // Sort along the normal: the only order that is geometry, whatever InstanceNumber says.
    slices.sort_by(|a, b| dot(a.position, n).total_cmp(&dot(b.position, n)));
    let mut report = GeometryReport::default();
    let mut kept: Vec<Slice> = Vec::with_capacity(slices.len());
    for (i, s) in slices.into_iter().enumerate() {
        if let Some(prev) = kept.last()
            && (dot(s.position, n) - dot(prev.position, n)).abs() < 1e-3
        {
            if prev.hu != s.hu {
                report.warnings.push(format!(
                    "two different slices at the same position ({:.2} mm); the first is kept",
                    dot(s.position, n)
                ));
            }
            report.duplicate_positions.push(i);
            continue;
        }
        kept.push(s);
    }
    let slices = kept;
    report.slices = slices.len();
    report.padding_voxels = slices.iter().map(|s| s.padding_voxels).sum();
    report.padding_hu = slices.iter().find_map(|s| s.padding_hu);
    let d: Vec<f64> = slices.windows(2).map(|w| dot(w[1].position, n) - dot(w[0].position, n)).collect();
    report.slice_gaps_mm = d.clone();
    let mut sorted = d.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(1.0);
    report.uniform_spacing = d.iter().all(|g| (g - median).abs() <= 0.01 * median.max(0.01) + 1e-3);
    for (i, g) in d.iter().enumerate() {
        if *g > 1.5 * median {
            let missing = (g / median).round() as usize - 1;
            report.missing_slices.push((i, missing.max(1)));
        }
    }
    if !report.missing_slices.is_empty() {
        let total: usize = report.missing_slices.iter().map(|(_, m)| m).sum();
        report
            .warnings
            .push(format!("about {total} slice(s) missing (gaps larger than 1.5 x the usual {median:.2} mm)"));
    } else if !report.uniform_spacing {
        report.warnings.push("non-uniform slice spacing".into());
    }
    // Mean step between origins: its angle to the normal is the gantry tilt.
    let step = if slices.len() > 1 {
        let (a, b) = (slices[0].position, slices[slices.len() - 1].position);
        let k = (slices.len() - 1) as f64;
        [(b[0] - a[0]) / k, (b[1] - a[1]) / k, (b[2] - a[2]) / k]
    } else {
        // One slice: its thickness is the only extent known (as ITK does).
        let t = slices[0].thickness.unwrap_or(1.0);
        [n[0] * t, n[1] * t, n[2] * t]
    };
    let cos = (dot(norm(step), n)).clamp(-1.0, 1.0);
    report.gantry_tilt_degrees = if slices.len() > 1 { cos.acos().to_degrees() } else { 0.0 };
    if report.gantry_tilt_degrees > 0.1 {
        report.warnings.push(format!(
            "gantry tilt {:.1} degrees: the volume is sheared (the NIfTI sform keeps the true geometry)",
            report.gantry_tilt_degrees
        ));
    }
    let slice_spacing = dot(step, n).abs();
    let mut hu = Vec::with_capacity(rows * columns * slices.len());
    for s in &slices {
        hu.extend_from_slice(&s.hu);
    }
    Ok(CtVolume {
        columns,
        rows,
        slices: slices.len(),
        spacing: [slices[0].spacing[1], slices[0].spacing[0], slice_spacing],
        origin: slices[0].position,
        direction: [r, c, n],
        slice_step: step,
        hu,
        sop_instance_uids: slices.iter().map(|s| s.sop.clone()).collect(),
        files: slices.iter().map(|s| s.path.clone()).collect(),
        report,
    })
}

impl CtVolume {
    pub fn at(&self, x: usize, y: usize, z: usize) -> f32 {
        self.hu[(z * self.rows + y) * self.columns + x]
    }

    /// Voxel-to-patient (LPS) affine: columns are the x, y, z steps, then the origin.
    pub fn affine_lps(&self) -> [[f64; 4]; 3] {
        let [r, c, _] = self.direction;
        let s = self.slice_step;
        let mut a = [[0.0; 4]; 3];
        for i in 0..3 {
            a[i] = [r[i] * self.spacing[0], c[i] * self.spacing[1], s[i], self.origin[i]];
        }
        a
    }
}
