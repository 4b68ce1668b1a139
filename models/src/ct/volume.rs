//! Loading a CT series into a HU volume with its geometry.
//!
//! Geometry comes from the (guarded) headers alone: slices are sorted and checked before any
//! pixel is decoded, the volume is allocated once, and each slice is decoded straight into its
//! place, in parallel. Native little-endian pixel data is read directly from its proven offset
//! (no intermediate copies); compressed syntaxes go through dicom-pixeldata.

use super::CtError;
use crate::dicom::{self, DicomHeader, DicomLayout, ts};
use crate::limits::Limits;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};
use serde::Serialize;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Padding voxels in a slice and their HU value.
type Padding = (usize, Option<f32>);

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

/// A volume's voxels in Hounsfield units, x fastest, then y, then z.
///
/// Whole HU are held as `i16` (half the memory of `f32`, and the NIfTI file's own type) when
/// every plane's rescale slope and intercept are integers and every value lands in range, which
/// is nearly every CT; the loader decodes straight into them. Anything else is `f32`.
#[derive(Debug, Clone, PartialEq)]
pub enum Voxels {
    Int16(Vec<i16>),
    Float32(Vec<f32>),
}

impl Default for Voxels {
    fn default() -> Self {
        Voxels::Float32(Vec::new())
    }
}

impl Voxels {
    pub fn len(&self) -> usize {
        match self {
            Voxels::Int16(v) => v.len(),
            Voxels::Float32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Voxel `i` in HU; `None` past the end.
    pub fn get(&self, i: usize) -> Option<f32> {
        match self {
            Voxels::Int16(v) => v.get(i).map(|x| f32::from(*x)),
            Voxels::Float32(v) => v.get(i).copied(),
        }
    }

    /// `len` voxels from `start` as `f32` (fewer at the end of the volume).
    pub fn range_f32(&self, start: usize, len: usize) -> Vec<f32> {
        match self {
            Voxels::Int16(v) => v.get(start..).unwrap_or_default().iter().take(len).map(|x| f32::from(*x)).collect(),
            Voxels::Float32(v) => v.get(start..).unwrap_or_default().iter().take(len).copied().collect(),
        }
    }

    /// Every voxel as `f32` (a copy).
    pub fn to_f32(&self) -> Vec<f32> {
        self.range_f32(0, self.len())
    }
}

/// A CT volume in Hounsfield units. Voxel (x, y, z) is at `hu[(z * rows + y) * columns + x]`;
/// x runs along the row direction, y along the column direction, z along the slice normal.
#[derive(Debug, Clone)]
pub struct CtVolume {
    pub columns: usize,
    pub rows: usize,
    pub slices: usize,
    /// Spacing along x, y (PixelSpacing\[1\], PixelSpacing\[0\]) and z (mean slice distance), mm.
    pub spacing: [f64; 3],
    /// ImagePositionPatient of the first sorted slice (LPS, mm).
    pub origin: [f64; 3],
    /// Row direction, column direction, slice normal (unit vectors, LPS).
    pub direction: [[f64; 3]; 3],
    /// Mean step between slice origins (LPS, mm): along the normal unless the gantry was tilted.
    pub slice_step: [f64; 3],
    pub hu: Voxels,
    /// SOPInstanceUID of each slice in sorted order (empty strings where the export blanked
    /// them; a multi-frame image repeats its UID, see `frames`).
    pub sop_instance_uids: Vec<String>,
    /// The 1-based frame of each slice within its file (1 for single-frame images).
    pub frames: Vec<u32>,
    /// The file of each slice, in sorted order (a multi-frame file repeats).
    pub files: Vec<PathBuf>,
    pub report: GeometryReport,
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
    let mut headers = Vec::with_capacity(files.len());
    for f in files {
        let h =
            dicom::read_header(f, limits).map_err(|e| CtError::Dicom { file: f.display().to_string(), source: e })?;
        headers.push(h);
    }
    load_series_with_headers(files, &headers, limits)
}

/// One image plane of the series: a single-frame image, or one frame of a multi-frame
/// (Enhanced CT) image, with the geometry and rescale that apply to it.
#[derive(Debug, Clone)]
struct Plane {
    file: usize,
    /// 0-based frame within its file (0 for single-frame images).
    frame: u32,
    position: [f64; 3],
    orientation: [f64; 6],
    spacing: [f64; 2],
    thickness: Option<f64>,
    slope: f64,
    intercept: f64,
}

/// The planes of every file: one per single-frame image, one per frame of a multi-frame image
/// (its functional groups give each frame's position, orientation, spacing and rescale).
fn planes_of(files: &[PathBuf], headers: &[DicomHeader]) -> Result<Vec<Plane>, CtError> {
    let geo = |m: String| CtError::Geometry(m);
    let mut planes = Vec::with_capacity(files.len());
    for (i, (f, h)) in files.iter().zip(headers).enumerate() {
        let frames = h.number_of_frames.unwrap_or(1).max(1);
        let slope = h.rescale_slope.unwrap_or(1.0);
        let intercept = h.rescale_intercept.unwrap_or(0.0);
        if frames == 1 && h.frames.is_empty() {
            let position =
                h.image_position_patient.ok_or_else(|| geo(format!("{}: no ImagePositionPatient", f.display())))?;
            let orientation = h
                .image_orientation_patient
                .ok_or_else(|| geo(format!("{}: no ImageOrientationPatient", f.display())))?;
            planes.push(Plane {
                file: i,
                frame: 0,
                position,
                orientation,
                spacing: h.pixel_spacing.unwrap_or([1.0, 1.0]),
                thickness: h.slice_thickness,
                slope,
                intercept,
            });
            continue;
        }
        if h.frames.len() != frames as usize {
            return Err(geo(format!(
                "{}: {frames} frames but {} per-frame functional groups; a multi-frame image needs each frame's plane position",
                f.display(),
                h.frames.len()
            )));
        }
        for (k, fp) in h.frames.iter().enumerate() {
            let missing = |what: &str| geo(format!("{}: frame {}: no {what}", f.display(), k + 1));
            planes.push(Plane {
                file: i,
                frame: k as u32,
                position: fp.position.or(h.image_position_patient).ok_or_else(|| missing("Plane Position"))?,
                orientation: fp
                    .orientation
                    .or(h.image_orientation_patient)
                    .ok_or_else(|| missing("Plane Orientation"))?,
                spacing: fp.pixel_spacing.or(h.pixel_spacing).unwrap_or([1.0, 1.0]),
                thickness: fp.slice_thickness.or(h.slice_thickness),
                slope: fp.rescale_slope.unwrap_or(slope),
                intercept: fp.rescale_intercept.unwrap_or(intercept),
            });
        }
    }
    Ok(planes)
}

/// As [`load_series`], with the headers already read (guarded) by the caller.
pub fn load_series_with_headers(
    files: &[PathBuf],
    headers: &[DicomHeader],
    limits: &Limits,
) -> Result<CtVolume, CtError> {
    if files.is_empty() || files.len() != headers.len() {
        return Err(CtError::Geometry("no files".into()));
    }
    let geo = |m: String| CtError::Geometry(m);
    let first = &headers[0];
    let (rows, columns) = (usize::from(first.rows.unwrap_or(0)), usize::from(first.columns.unwrap_or(0)));
    if rows == 0 || columns == 0 {
        return Err(geo(format!("{}: no Rows/Columns", files[0].display())));
    }
    for (f, h) in files.iter().zip(headers) {
        // A whole-slide image escapes the per-file DICOM limits (its frames are tiles, bounded
        // by the slide reader): it is never a CT plane.
        if h.sop_class_uid.as_deref() == Some(crate::dicom::sop_class::VL_WHOLE_SLIDE_MICROSCOPY) {
            return Err(CtError::Decode {
                file: f.display().to_string(),
                message: "a DICOM whole-slide image (VL Whole Slide Microscopy) is not a CT image".into(),
            });
        }
        // A CT image stores 16 bits a sample (8 in some secondary exports). Fewer would let a
        // file of a few kilobytes claim a volume of tens of megabytes of f32 within the header
        // guard's pixel-byte limit (finding 12, docs/RELIABILITY.md): refused before allocating.
        if let Some(bits) = h.bits_allocated.filter(|b| !matches!(b, 8 | 16)) {
            return Err(CtError::Decode {
                file: f.display().to_string(),
                message: format!("BitsAllocated {bits}: a CT image stores 16 (or 8) bits a sample"),
            });
        }
        if usize::from(h.rows.unwrap_or(0)) != rows || usize::from(h.columns.unwrap_or(0)) != columns {
            return Err(geo(format!(
                "mixed image sizes: {columns}x{rows} and {}x{} ({})",
                h.columns.unwrap_or(0),
                h.rows.unwrap_or(0),
                f.display()
            )));
        }
    }
    // Frame counts are bounded by the header guard; the voxel total is checked before planes
    // are listed, so nothing below grows with an absurd claim.
    let total_planes: u64 = headers.iter().map(|h| u64::from(h.number_of_frames.unwrap_or(1).max(1))).sum();
    let voxels = ((rows * columns) as u64).saturating_mul(total_planes);
    if voxels > MAX_VOXELS {
        return Err(CtError::TooLarge { voxels, limit: MAX_VOXELS });
    }
    let planes = planes_of(files, headers)?;
    let o = planes[0].orientation;
    let ps = planes[0].spacing;
    for p in &planes {
        let f = files[p.file].display();
        if p.orientation.iter().zip(o.iter()).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(geo(format!("mixed orientations within the series ({f})")));
        }
        if p.spacing.iter().zip(ps.iter()).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(geo(format!("mixed pixel spacing within the series ({f})")));
        }
    }
    let r = norm([o[0], o[1], o[2]]);
    let c = norm([o[3], o[4], o[5]]);
    let n = norm(cross(r, c));
    let pos = |i: usize| planes[i].position;
    let same_image = |a: usize, b: usize| {
        planes[a].file == planes[b].file
            || headers[planes[a].file].sop_instance_uid == headers[planes[b].file].sop_instance_uid
    };
    // Sort along the normal: the only order that is geometry, whatever InstanceNumber says.
    let mut order: Vec<usize> = (0..planes.len()).collect();
    order.sort_by(|&a, &b| dot(pos(a), n).total_cmp(&dot(pos(b), n)));
    let mut report = GeometryReport::default();
    let mut kept: Vec<usize> = Vec::with_capacity(order.len());
    for (i, &idx) in order.iter().enumerate() {
        if let Some(&prev) = kept.last()
            && (dot(pos(idx), n) - dot(pos(prev), n)).abs() < 1e-3
        {
            if !same_image(idx, prev) || planes[idx].frame != planes[prev].frame {
                report
                    .warnings
                    .push(format!("two images at the same position ({:.2} mm); the first is kept", dot(pos(idx), n)));
            }
            report.duplicate_positions.push(i);
            continue;
        }
        kept.push(idx);
    }
    report.slices = kept.len();
    let d: Vec<f64> = kept.windows(2).map(|w| dot(pos(w[1]), n) - dot(pos(w[0]), n)).collect();
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
    let step = if kept.len() > 1 {
        let (a, b) = (pos(kept[0]), pos(kept[kept.len() - 1]));
        let k = (kept.len() - 1) as f64;
        [(b[0] - a[0]) / k, (b[1] - a[1]) / k, (b[2] - a[2]) / k]
    } else {
        // One slice: its thickness is the only extent known (as ITK does).
        let t = planes[kept[0]].thickness.filter(|t| *t > 0.0).unwrap_or(1.0);
        [n[0] * t, n[1] * t, n[2] * t]
    };
    report.gantry_tilt_degrees =
        if kept.len() > 1 { dot(norm(step), n).clamp(-1.0, 1.0).acos().to_degrees() } else { 0.0 };
    if report.gantry_tilt_degrees > 0.1 {
        report.warnings.push(format!(
            "gantry tilt {:.1} degrees: the volume is sheared (the NIfTI sform keeps the true geometry)",
            report.gantry_tilt_degrees
        ));
    }
    // Whole HU when every plane's rescale is integral (and small enough that no sum overflows);
    // a value out of i16's range sends the series to f32 after all.
    let whole = kept.iter().all(|&p| {
        let (s, i) = (planes[p].slope, planes[p].intercept);
        s.fract() == 0.0 && i.fract() == 0.0 && s.abs() <= 1024.0 && i.abs() <= 1_048_576.0
    });
    let decoded = if whole {
        decode_all::<i16>(files, headers, &planes, &kept, rows * columns, limits)?.map(|(v, p)| (Voxels::Int16(v), p))
    } else {
        None
    };
    let (hu, paddings) = match decoded {
        Some(d) => d,
        None => decode_all::<f32>(files, headers, &planes, &kept, rows * columns, limits)?
            .map(|(v, p)| (Voxels::Float32(v), p))
            .ok_or_else(|| geo("a decoded value does not fit in f32".into()))?,
    };
    for (padding_voxels, padding_hu) in paddings {
        report.padding_voxels += padding_voxels;
        report.padding_hu = report.padding_hu.or(padding_hu);
    }
    Ok(CtVolume {
        columns,
        rows,
        slices: kept.len(),
        spacing: [ps[1], ps[0], dot(step, n).abs()],
        origin: pos(kept[0]),
        direction: [r, c, n],
        slice_step: step,
        hu,
        sop_instance_uids: kept
            .iter()
            .map(|&i| headers[planes[i].file].sop_instance_uid.clone().unwrap_or_default())
            .collect(),
        frames: kept.iter().map(|&i| planes[i].frame + 1).collect(),
        files: kept.iter().map(|&i| files[planes[i].file].clone()).collect(),
        report,
    })
}

/// A plane to decode (index into the planes) and its place in the volume.
type Slot<'a, T> = (usize, &'a mut [T]);

/// What a decoder writes a voxel as.
trait HuVoxel: Copy + Default + Send + Sync + 'static {
    /// `stored * slope + intercept` for an integer stored sample; `None` when it does not fit.
    fn from_stored(stored: i32, slope: f64, intercept: f64) -> Option<Self>;
    /// A HU value computed in f64 by a codec's path; `None` when it does not fit.
    fn from_hu(hu: f64) -> Option<Self>;
    fn to_f32(self) -> f32;
    /// Native little-endian 16-bit samples into `dst`; false when one does not fit.
    fn from_le16(dst: &mut [Self], bytes: &[u8], stored: StoredBits, slope: f64, intercept: f64) -> bool;
}

impl HuVoxel for f32 {
    #[inline]
    fn from_stored(stored: i32, slope: f64, intercept: f64) -> Option<f32> {
        Some(stored as f32 * slope as f32 + intercept as f32)
    }
    fn from_hu(hu: f64) -> Option<f32> {
        Some(hu as f32)
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_le16(dst: &mut [f32], bytes: &[u8], stored: StoredBits, slope: f64, intercept: f64) -> bool {
        let (s, i) = (slope as f32, intercept as f32);
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
            *d = stored.value(u16::from_le_bytes([b[0], b[1]])) as f32 * s + i;
        }
        true
    }
}

/// Only for integral slope and intercept (the loader checks before choosing i16).
impl HuVoxel for i16 {
    #[inline]
    fn from_stored(stored: i32, slope: f64, intercept: f64) -> Option<i16> {
        i16::try_from(i64::from(stored) * slope as i64 + intercept as i64).ok()
    }
    fn from_hu(hu: f64) -> Option<i16> {
        (hu.fract() == 0.0 && (-32768.0..=32767.0).contains(&hu)).then_some(hu as i16)
    }
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    fn from_le16(dst: &mut [i16], bytes: &[u8], stored: StoredBits, slope: f64, intercept: f64) -> bool {
        // |stored| < 2^16, |slope| <= 1024, |intercept| <= 2^20: no i32 overflow. The fit is
        // folded without a branch so that the loop vectorises.
        let (s, i) = (slope as i32, intercept as i32);
        let mut fits = true;
        for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
            let v = stored.value(u16::from_le_bytes([b[0], b[1]])) * s + i;
            fits &= i32::from(v as i16) == v;
            *d = v as i16;
        }
        fits
    }
}

/// Ask the kernel for transparent huge pages under `v` (Linux; advice only, ignored where
/// unsupported or disabled).
fn advise_huge_pages<T>(v: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = v.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(v);
        // Whole pages inside the allocation only.
        let (first, last) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if last > first {
            // SAFETY: [first, last) lies within `v`'s own allocation, which lives across this call;
            // MADV_HUGEPAGE changes how its pages are backed, never their contents, and its
            // result is advice (an error leaves the memory as it was).
            let _ = unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE) };
        }
    }
}

/// Allocate the volume once and decode every kept plane into its place, in parallel. Work is
/// handed out in file and frame order so that a multi-frame file is opened once per worker.
/// `None` when a value does not fit in `T`.
#[allow(clippy::type_complexity)]
fn decode_all<T: HuVoxel>(
    files: &[PathBuf],
    headers: &[DicomHeader],
    planes: &[Plane],
    kept: &[usize],
    plane_len: usize,
    limits: &Limits,
) -> Result<Option<(Vec<T>, Vec<Padding>)>, CtError> {
    // Zeroed by the allocator (untouched pages cost nothing until written); huge pages asked for
    // so that the decoders fault in 2 MiB at a time, not 4 KiB (40,000 faults for 300 slices).
    let mut hu = vec![T::default(); plane_len * kept.len()];
    advise_huge_pages(&mut hu);
    let mut slots: Vec<Slot<T>> = kept.iter().copied().zip(hu.chunks_mut(plane_len)).collect();
    slots.sort_by_key(|(p, _)| (planes[*p].file, planes[*p].frame));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(slots.len()).max(1);
    let per = slots.len().div_ceil(threads);
    let mut work: Vec<Vec<Slot<T>>> = Vec::with_capacity(threads);
    let mut rest = slots.into_iter();
    loop {
        let chunk: Vec<Slot<T>> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        work.push(chunk);
    }
    let results: Vec<Result<Option<Vec<Padding>>, CtError>> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .into_iter()
            .map(|mut chunk| s.spawn(move || decode_chunk(files, headers, planes, &mut chunk, limits)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(CtError::Geometry("decoder thread panicked".into()))))
            .collect()
    });
    let mut paddings = Vec::with_capacity(kept.len());
    for r in results {
        match r? {
            Some(p) => paddings.extend(p),
            None => return Ok(None),
        }
    }
    Ok(Some((hu, paddings)))
}

/// Decode a worker's planes, opening each file once for its run of frames. `None` when a value
/// does not fit in `T`.
fn decode_chunk<T: HuVoxel>(
    files: &[PathBuf],
    headers: &[DicomHeader],
    planes: &[Plane],
    chunk: &mut [Slot<T>],
    limits: &Limits,
) -> Result<Option<Vec<Padding>>, CtError> {
    let mut out = Vec::with_capacity(chunk.len());
    let mut start = 0;
    while start < chunk.len() {
        let file = planes[chunk[start].0].file;
        let end = start + chunk[start..].iter().take_while(|(p, _)| planes[*p].file == file).count();
        match decode_file(&files[file], &headers[file], planes, &mut chunk[start..end], limits)? {
            Some(p) => out.extend(p),
            None => return Ok(None),
        }
        start = end;
    }
    Ok(Some(out))
}

/// Decode frames of one file into their slots (rows x columns HU each). Returns, per frame,
/// (padding voxels, padding HU); `None` when a value does not fit in `T`.
fn decode_file<T: HuVoxel>(
    path: &Path,
    h: &DicomHeader,
    planes: &[Plane],
    slots: &mut [Slot<T>],
    limits: &Limits,
) -> Result<Option<Vec<Padding>>, CtError> {
    let file_s = path.display().to_string();
    let derr = |m: String| CtError::Decode { file: file_s.clone(), message: m };
    let native_le = matches!(h.transfer_syntax_uid.as_str(), ts::EXPLICIT_VR_LE | ts::IMPLICIT_VR_LE);
    if native_le && h.bits_allocated == Some(16) && h.samples_per_pixel.unwrap_or(1) == 1 {
        let f = std::fs::File::open(path)?;
        // Proves the value holds every frame before any is read.
        let ext = dicom::check_pixel_data_file(&f, h, limits)
            .map_err(|e| CtError::Dicom { file: file_s.clone(), source: e })?;
        let stored = StoredBits::of(h, 16);
        let mut bytes = Vec::new();
        let mut out = Vec::with_capacity(slots.len());
        for (p, dst) in slots.iter_mut() {
            let plane = &planes[*p];
            let frame_bytes = dst.len() * 2;
            bytes.resize(frame_bytes, 0);
            f.read_exact_at(&mut bytes, ext.value_offset + u64::from(plane.frame) * frame_bytes as u64)?;
            if !T::from_le16(dst, &bytes, stored, plane.slope, plane.intercept) {
                return Ok(None);
            }
            out.push(padding_of(h, dst, plane.slope, plane.intercept));
        }
        return Ok(Some(out));
    }
    let obj = open_object(path, h).map_err(derr)?;
    let multi_frame = h.number_of_frames.unwrap_or(1) > 1;
    if h.transfer_syntax_uid == ts::JPEG_EXTENDED_12BIT && h.bits_allocated == Some(16) {
        return decode_jpeg12_frames(&obj, h, planes, slots).map_err(derr);
    }
    if h.transfer_syntax_uid == ts::RLE_LOSSLESS
        && h.samples_per_pixel.unwrap_or(1) == 1
        && matches!(h.bits_allocated, Some(8 | 16))
    {
        return decode_rle_frames(&obj, h, planes, slots).map_err(derr);
    }
    // Every JPEG 2000 codestream and JPEG (or JPEG-LS) stream is checked against Rows x Columns
    // first: dicom-rs's JPEG 2000 adapter indexes past its buffer on one that is larger, and its
    // JPEG decoder allocates whatever the stream's frame header claims (docs/RELIABILITY.md).
    let j2k = dicom::j2k::is_j2k_transfer_syntax(&h.transfer_syntax_uid);
    if j2k || dicom::jpeg_frame::is_jpeg_transfer_syntax(&h.transfer_syntax_uid) {
        let fragments = obj
            .element(dicom_dictionary_std::tags::PIXEL_DATA)
            .ok()
            .and_then(|e| e.value().fragments())
            .ok_or_else(|| derr("compressed pixel data without fragments".into()))?;
        let (cols, rows) = (u32::from(h.columns.unwrap_or(0)), u32::from(h.rows.unwrap_or(0)));
        let samples = h.samples_per_pixel.unwrap_or(1);
        if j2k {
            dicom::j2k::check_fragments(fragments, cols, rows, samples).map_err(derr)?;
        } else {
            dicom::jpeg_frame::check_fragments(fragments, cols, rows, samples).map_err(derr)?;
        }
    }
    let mut out = Vec::with_capacity(slots.len());
    for (p, dst) in slots.iter_mut() {
        let plane = &planes[*p];
        let decoded = if multi_frame { obj.decode_pixel_data_frame(plane.frame) } else { obj.decode_pixel_data() };
        let decoded = decoded.map_err(|e| derr(format!("{e} [transfer syntax {}]", h.transfer_syntax_uid.as_str())))?;
        if decoded.samples_per_pixel() != 1 {
            return Err(derr(format!("expected one grey sample per pixel, got {}", decoded.samples_per_pixel())));
        }
        let stored: Vec<f64> = decoded
            .to_vec_with_options::<f64>(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
            .map_err(|e| derr(e.to_string()))?;
        if stored.len() != dst.len() {
            return Err(derr(format!("decoded {} samples, expected {}", stored.len(), dst.len())));
        }
        for (d, v) in dst.iter_mut().zip(&stored) {
            match T::from_hu(v * plane.slope + plane.intercept) {
                Some(x) => *d = x,
                None => return Ok(None),
            }
        }
        out.push(padding_of(h, dst, plane.slope, plane.intercept));
    }
    Ok(Some(out))
}

/// How a 16-bit stored sample becomes a value: only the stored bits count, sign-extended from
/// the stored high bit when Pixel Representation is signed.
#[derive(Clone, Copy)]
struct StoredBits {
    shift: u32,
    signed: bool,
}

impl StoredBits {
    /// From the header; `default_bits` when BitsStored is absent.
    fn of(h: &DicomHeader, default_bits: u16) -> Self {
        let bits = u32::from(h.bits_stored.unwrap_or(default_bits).clamp(1, 16));
        StoredBits { shift: 16 - bits, signed: h.pixel_representation == Some(1) }
    }

    #[inline]
    fn value(self, raw: u16) -> i32 {
        let shift = self.shift;
        if self.signed { i32::from(((raw << shift) as i16) >> shift) } else { i32::from((raw << shift) >> shift) }
    }
}

/// Stored samples of a frame into its slot; false when one does not fit in `T`.
fn put_stored<T: HuVoxel>(dst: &mut [T], raw: &[u16], stored: StoredBits, plane: &Plane) -> bool {
    for (d, r) in dst.iter_mut().zip(raw) {
        match T::from_stored(stored.value(*r), plane.slope, plane.intercept) {
            Some(v) => *d = v,
            None => return false,
        }
    }
    true
}

/// RLE Lossless grey frames through our own bounds-checked decoder (one fragment per frame).
fn decode_rle_frames<T: HuVoxel>(
    obj: &dicom_object::DefaultDicomObject,
    h: &DicomHeader,
    planes: &[Plane],
    slots: &mut [Slot<T>],
) -> Result<Option<Vec<Padding>>, String> {
    let element = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    let fragments = element.value().fragments().ok_or("RLE transfer syntax but pixel data not encapsulated")?;
    let bits = h.bits_allocated.unwrap_or(16);
    let stored = StoredBits::of(h, bits);
    let mut out = Vec::with_capacity(slots.len());
    for (p, dst) in slots.iter_mut() {
        let plane = &planes[*p];
        let fragment = fragments
            .get(plane.frame as usize)
            .ok_or_else(|| format!("RLE: no fragment for frame {}", plane.frame + 1))?;
        let raw = crate::dicom::rle::decode_frame(fragment, dst.len(), usize::from(bits / 8))
            .map_err(|e| format!("{e} (frame {})", plane.frame + 1))?;
        if !put_stored(dst, &raw, stored, plane) {
            return Ok(None);
        }
        out.push(padding_of(h, dst, plane.slope, plane.intercept));
    }
    Ok(Some(out))
}

/// 12-bit JPEG Extended frames through our own decoder (no Rust crate decodes 12-bit DCT JPEG).
fn decode_jpeg12_frames<T: HuVoxel>(
    obj: &dicom_object::DefaultDicomObject,
    h: &DicomHeader,
    planes: &[Plane],
    slots: &mut [Slot<T>],
) -> Result<Option<Vec<Padding>>, String> {
    let element = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    let fragments = element.value().fragments().ok_or("JPEG transfer syntax but pixel data not encapsulated")?;
    let frames = h.number_of_frames.unwrap_or(1).max(1) as usize;
    let stored = StoredBits::of(h, 12);
    let mut out = Vec::with_capacity(slots.len());
    for (p, dst) in slots.iter_mut() {
        let plane = &planes[*p];
        // One frame: all fragments are its codestream. Several: one fragment per frame.
        let joined;
        let stream: &[u8] = if frames == 1 {
            joined = fragments.concat();
            &joined
        } else if fragments.len() == frames {
            &fragments[plane.frame as usize]
        } else {
            return Err(format!("{} fragments for {frames} frames: frames split across fragments", fragments.len()));
        };
        let img = crate::dicom::jpeg12::decode(stream, dst.len() as u64)
            .map_err(|e| format!("12-bit JPEG (frame {}): {e}", plane.frame + 1))?;
        if img.width * img.height != dst.len() || img.width != usize::from(h.columns.unwrap_or(0)) {
            return Err(format!("JPEG image {}x{} does not match Rows/Columns", img.width, img.height));
        }
        if !put_stored(dst, &img.samples, stored, plane) {
            return Ok(None);
        }
        out.push(padding_of(h, dst, plane.slope, plane.intercept));
    }
    Ok(Some(out))
}

/// Open a whole DICOM object (pixel data included) in the layout its header was read with.
pub(crate) fn open_object(path: &Path, h: &DicomHeader) -> Result<dicom_object::DefaultDicomObject, String> {
    // The backstop for where dicom-rs and the guard read a length differently (crate::memory).
    let cap = crate::memory::read_cap(std::fs::metadata(path).map_err(|e| e.to_string())?.len());
    crate::memory::with_allocation_cap(cap, || open_object_uncapped(path, h))
}

fn open_object_uncapped(path: &Path, h: &DicomHeader) -> Result<dicom_object::DefaultDicomObject, String> {
    match h.layout {
        Some(DicomLayout::Part10) => {
            OpenFileOptions::new().read_preamble(ReadPreamble::Always).open_file(path).map_err(|e| e.to_string())
        }
        Some(DicomLayout::MetaWithoutPreamble) => {
            OpenFileOptions::new().read_preamble(ReadPreamble::Never).open_file(path).map_err(|e| e.to_string())
        }
        Some(DicomLayout::RawDataset { .. }) => {
            let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
            let tsx = dicom_encoding::TransferSyntaxIndex::get(&registry, h.transfer_syntax_uid.as_str())
                .ok_or_else(|| "unknown transfer syntax".to_string())?;
            let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let ds = InMemDicomObject::read_dataset_with_ts(BufReader::new(file), tsx).map_err(|e| e.to_string())?;
            ds.with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(h.transfer_syntax_uid.as_str())
                    .media_storage_sop_class_uid(
                        h.sop_class_uid.clone().unwrap_or_else(|| dicom::sop_class::CT_IMAGE.into()),
                    )
                    .media_storage_sop_instance_uid(h.sop_instance_uid.clone().unwrap_or_else(|| "2.25.1".into())),
            )
            .map_err(|e| e.to_string())
        }
        None => Err("not DICOM".into()),
    }
}

/// Padding (PixelPaddingValue: outside the scan field) keeps its rescaled value, as ITK and
/// SimpleITK do; it is counted so the report says it is there. The model's HU window clips it.
fn padding_of<T: HuVoxel>(h: &DicomHeader, dst: &[T], slope: f64, intercept: f64) -> Padding {
    let Some(p) = h.pixel_padding_value else { return (0, None) };
    let phu = (p as f64 * slope + intercept) as f32;
    (dst.iter().filter(|v| v.to_f32() == phu).count(), Some(phu))
}

impl CtVolume {
    /// HU at voxel (x, y, z); the caller keeps the indices inside the volume.
    pub fn at(&self, x: usize, y: usize, z: usize) -> f32 {
        let i = (z * self.rows + y) * self.columns + x;
        match &self.hu {
            Voxels::Int16(v) => f32::from(v[i]),
            Voxels::Float32(v) => v[i],
        }
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
