//! DICOM whole-slide images (VL Whole Slide Microscopy Image IOD), read natively.
//!
//! A DICOM slide is a series: one instance per pyramid level (or several, as a concatenation or
//! as sparse tiles), plus label, overview and thumbnail instances. [`read_instance`] reads one
//! file's header (through the same length guard and allocation cap as CT) and locates every frame
//! in the file without reading pixels; [`open_series`] gathers the instances of one series from
//! the files beside the one named (as OpenSlide does) and assembles the pyramid: levels by total
//! pixel matrix size, each frame placed on its level's tile grid (TILED_FULL: in frame order,
//! after a concatenation's frame offset; TILED_SPARSE: by its Plane Position (Slide) in the
//! per-frame functional groups). Tiles no frame covers are white, as OpenSlide draws them.
//!
//! Frames: JPEG baseline (libjpeg-turbo, colour space from the stream as OpenSlide 4 does),
//! JPEG 2000 (openjp2), JPEG-LS lossless and near-lossless RGB (CharLS, as DCMTK decodes it) and
//! uncompressed interleaved RGB. Refused with the reason: other frame encodings, more than one optical path, illumination other than brightfield,
//! more than one focal plane, monochrome (fluorescence) images, frames not on the tile grid,
//! and frames split over several fragments. The ICC profile is carried ([`WsiInstance::icc_profile`]).
//! Label and overview instances are listed as associated images and never decoded: they show
//! the slide label, which carries patient identifiers.

use super::SlideError;
use super::tiff::{LevelData, MAX_TILE_SIDE, SlideFormat, SlideHeader, SlideLevel};
use crate::dicom::header::{float_in, header_of, int, items, multi_text, read_meta_group, read_object, text};
use crate::dicom::{
    DicomError, DicomLayout, check_pixel_data_file, read_header_file, read_prefix, sniff_dicom, sop_class,
};
use crate::limits::Limits;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What an instance of a slide series holds (Image Type, value 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// A pyramid level.
    Volume,
    /// The slide label: patient identifiers; never decoded.
    Label,
    /// The whole glass with its label: never decoded.
    Overview,
    /// A small picture of the tissue.
    Thumbnail,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Volume => "volume",
            Flavor::Label => "label",
            Flavor::Overview => "macro",
            Flavor::Thumbnail => "thumbnail",
        }
    }
}

/// How a frame is encoded, as the tile decoder knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameCodec {
    Jpeg,
    /// `ht`: High-Throughput JPEG 2000 (decoded the same way; named apart).
    Jpeg2000 {
        ycbcr: bool,
        ht: bool,
    },
    JpegLs,
    Native,
}

/// A JPEG 2000 level's compression code (Aperio's two, which tell the decoder the colour, or the
/// HTJ2K pair) and TIFF photometric interpretation (6 YCbCr, 2 RGB).
fn j2k_codes(ycbcr: bool, ht: bool) -> (u16, u16) {
    use super::tiff::{COMPRESSION_HTJ2K_RGB, COMPRESSION_HTJ2K_YCBCR};
    match (ycbcr, ht) {
        (true, false) => (33003, 6),
        (false, false) => (33005, 2),
        (true, true) => (COMPRESSION_HTJ2K_YCBCR, 6),
        (false, true) => (COMPRESSION_HTJ2K_RGB, 2),
    }
}

/// One file of a DICOM slide: its place in the series and where its frames lie.
#[derive(Debug, Clone)]
pub struct WsiInstance {
    pub path: PathBuf,
    pub series_uid: String,
    pub frame_of_reference_uid: Option<String>,
    pub flavor: Flavor,
    pub total_columns: u64,
    pub total_rows: u64,
    pub tile_width: u32,
    pub tile_height: u32,
    pub transfer_syntax: String,
    pub photometric: String,
    pub microns_per_pixel: Option<f64>,
    pub manufacturer: Option<String>,
    /// The ICC profile of the (single) optical path or of the image, as stored.
    pub icc_profile: Option<Vec<u8>>,
    /// Concatenation UID and the frame offset of this part (TILED_FULL levels split over files).
    concatenation: Option<(String, u64)>,
    codec: FrameCodec,
    /// Each frame's (offset, length) in the file.
    frames: Vec<(u64, u64)>,
    /// TILED_SPARSE: each frame's top-left pixel (0-based column, row); None for TILED_FULL.
    positions: Option<Vec<(u64, u64)>>,
}

/// Brightfield illumination (DCM 111744), the only optical path the model was trained on.
const BRIGHTFIELD: &str = "111744";

fn bad(msg: impl Into<String>) -> SlideError {
    SlideError::Dicom(msg.into())
}

fn from_dicom(e: DicomError) -> SlideError {
    match e {
        DicomError::OverLimit { what, value, limit } => SlideError::OverLimit { what, value, limit },
        DicomError::Incomplete(m) => SlideError::Incomplete(m),
        DicomError::Io(e) => SlideError::Io(e),
        other => SlideError::Dicom(other.to_string()),
    }
}

/// Whether the file is a DICOM whole-slide image: its file meta group names the VL Whole Slide
/// Microscopy SOP Class. Nothing past the meta group is parsed, so a level file
/// still being copied is still seen as one (and then refused as incomplete, not left out).
pub fn is_dicom_wsi(file: &File) -> bool {
    let mut head = [0u8; 132];
    let Ok(n) = read_prefix(file, &mut head) else { return false };
    let start = match sniff_dicom(head.get(..n).unwrap_or(&[])) {
        Some(DicomLayout::Part10) => 132,
        Some(DicomLayout::MetaWithoutPreamble) => 0,
        _ => return false,
    };
    read_meta_group(file, start).and_then(|m| m.sop_class).as_deref() == Some(sop_class::VL_WHOLE_SLIDE_MICROSCOPY)
}

/// Read one instance of a slide series: header checks and the frame table (no pixels).
pub fn read_instance(path: &Path, file: &File, limits: &Limits) -> Result<WsiInstance, SlideError> {
    let (obj, ts_uid, layout) = read_object(file, limits).map_err(from_dicom)?;
    if text(&obj, tags::SOP_CLASS_UID).as_deref() != Some(sop_class::VL_WHOLE_SLIDE_MICROSCOPY) {
        return Err(bad("not a DICOM whole-slide image (SOP Class is not VL Whole Slide Microscopy)"));
    }
    let series_uid = text(&obj, tags::SERIES_INSTANCE_UID).ok_or_else(|| bad("no SeriesInstanceUID"))?;
    let image_type = multi_text(&obj, tags::IMAGE_TYPE);
    let flavor = match image_type.get(2).map(String::as_str) {
        Some("VOLUME") => Flavor::Volume,
        Some("LABEL") => Flavor::Label,
        Some("OVERVIEW") => Flavor::Overview,
        Some("THUMBNAIL") => Flavor::Thumbnail,
        Some(other) => {
            return Err(bad(format!("Image Type {other} is not a slide level, label, overview or thumbnail")));
        }
        None => {
            return Err(bad(
                "Image Type (0008,0008) is missing; it says whether the file is a level, a label or an overview \
                 (required in DICOM whole-slide images: export the slide again)",
            ));
        }
    };
    if flavor != Flavor::Volume {
        // A label, overview or thumbnail is listed, never decoded: its encoding does not matter.
        return Ok(WsiInstance {
            path: path.to_path_buf(),
            series_uid,
            frame_of_reference_uid: text(&obj, tags::FRAME_OF_REFERENCE_UID),
            flavor,
            total_columns: 0,
            total_rows: 0,
            tile_width: 0,
            tile_height: 0,
            transfer_syntax: ts_uid,
            photometric: text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
            microns_per_pixel: None,
            manufacturer: text(&obj, tags::MANUFACTURER),
            icc_profile: None,
            concatenation: None,
            codec: FrameCodec::Native,
            frames: Vec::new(),
            positions: None,
        });
    }
    let u = |tag| int::<u64>(&obj, tag);
    let (total_columns, total_rows) = match (u(tags::TOTAL_PIXEL_MATRIX_COLUMNS), u(tags::TOTAL_PIXEL_MATRIX_ROWS)) {
        (Some(c), Some(r)) if c > 0 && r > 0 => (c, r),
        _ => return Err(bad("Total Pixel Matrix Columns/Rows missing or zero")),
    };
    for (what, v) in [("slide width", total_columns), ("slide height", total_rows)] {
        if v > limits.max_slide_dimension {
            return Err(SlideError::OverLimit { what, value: v, limit: limits.max_slide_dimension });
        }
    }
    let (tile_width, tile_height) = match (int::<u32>(&obj, tags::COLUMNS), int::<u32>(&obj, tags::ROWS)) {
        (Some(c), Some(r)) if c > 0 && r > 0 => (c, r),
        _ => return Err(bad("Rows/Columns (the frame size) missing or zero")),
    };
    let max_tile = MAX_TILE_SIDE.min(limits.max_slide_dimension);
    for (what, v) in [("tile width", tile_width), ("tile height", tile_height)] {
        if u64::from(v) > max_tile {
            return Err(SlideError::OverLimit { what, value: u64::from(v), limit: max_tile });
        }
    }
    let frame_count = int::<u64>(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    if frame_count > limits.max_slide_tiles {
        return Err(SlideError::OverLimit { what: "frames", value: frame_count, limit: limits.max_slide_tiles });
    }
    let photometric = text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let spp = int::<u16>(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if spp != 3 || photometric.starts_with("MONOCHROME") {
        return Err(bad(format!(
            "{spp} sample(s) per pixel, {photometric}: a monochrome (fluorescence) slide; only brightfield colour \
             slides are read"
        )));
    }
    if int::<u16>(&obj, tags::BITS_ALLOCATED) != Some(8) {
        return Err(bad("only 8 bits per sample are read"));
    }
    check_optical_paths(&obj)?;
    if int::<u64>(&obj, tags::TOTAL_PIXEL_MATRIX_FOCAL_PLANES).unwrap_or(1) > 1 {
        return Err(bad("more than one focal plane (a z-stack): only single-plane slides are read"));
    }
    let codec = match ts_uid.as_str() {
        "1.2.840.10008.1.2.4.50" => FrameCodec::Jpeg,
        // JPEG 2000, and High-Throughput JPEG 2000 (lossless, lossless RPCL, lossy): the same
        // codestream syntax with HT code blocks, which OpenJPEG's decoder reads as well.
        "1.2.840.10008.1.2.4.90"
        | "1.2.840.10008.1.2.4.91"
        | "1.2.840.10008.1.2.4.201"
        | "1.2.840.10008.1.2.4.202"
        | "1.2.840.10008.1.2.4.203" => FrameCodec::Jpeg2000 {
            ycbcr: photometric == "YBR_FULL" || photometric == "YBR_FULL_422",
            ht: ts_uid.starts_with("1.2.840.10008.1.2.4.20"),
        },
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" if photometric == "RGB" => FrameCodec::JpegLs,
        "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2" if photometric == "RGB" => {
            if int::<u16>(&obj, tags::PLANAR_CONFIGURATION).unwrap_or(0) != 0 {
                return Err(bad("uncompressed frames by colour plane (Planar Configuration 1) are not read"));
            }
            FrameCodec::Native
        }
        other => {
            return Err(bad(format!(
                "whole-slide frames in transfer syntax {other} ({photometric}) are not read: JPEG baseline, JPEG 2000 \
                 (and HTJ2K), JPEG-LS RGB and uncompressed RGB are"
            )));
        }
    };
    let positions = match text(&obj, tags::DIMENSION_ORGANIZATION_TYPE).as_deref() {
        Some("TILED_SPARSE") => Some(sparse_positions(&obj, frame_count)?),
        // TILED_FULL, or absent (older converters): frames in row-major tile order.
        _ => None,
    };
    let microns_per_pixel = pixel_spacing_mm(&obj)
        .map(|mm| mm * 1000.0)
        .or_else(|| {
            let w = float_in(&obj, tags::IMAGED_VOLUME_WIDTH)?;
            Some(w * 1000.0 / total_columns as f64)
        })
        .filter(|m| m.is_finite() && *m > 0.01 && *m < 100.0);
    let icc_profile = items(&obj, tags::OPTICAL_PATH_SEQUENCE)
        .first()
        .and_then(|p| bytes(p, tags::ICC_PROFILE))
        .or_else(|| bytes(&obj, tags::ICC_PROFILE));
    let concatenation = text(&obj, tags::CONCATENATION_UID)
        .map(|uid| (uid, int::<u64>(&obj, tags::CONCATENATION_FRAME_OFFSET_NUMBER).unwrap_or(0)));
    // Where the frames are: the header of the object read above, then the pixel data's items.
    let header = header_of(&obj, ts_uid.clone(), layout, limits).map_err(from_dicom)?;
    let extent = check_pixel_data_file(file, &header, limits).map_err(from_dicom)?;
    let frames = match codec {
        FrameCodec::Native => {
            let size = u64::from(tile_width) * u64::from(tile_height) * 3;
            if extent.value_bytes < size.saturating_mul(frame_count) {
                return Err(SlideError::Incomplete(format!(
                    "{} bytes of pixel data for {frame_count} frames of {size}",
                    extent.value_bytes
                )));
            }
            (0..frame_count).map(|i| (extent.value_offset + i * size, size)).collect()
        }
        _ => fragments(file, extent.value_offset, frame_count)?,
    };
    Ok(WsiInstance {
        path: path.to_path_buf(),
        series_uid,
        frame_of_reference_uid: text(&obj, tags::FRAME_OF_REFERENCE_UID),
        flavor,
        total_columns,
        total_rows,
        tile_width,
        tile_height,
        transfer_syntax: ts_uid,
        photometric,
        microns_per_pixel,
        manufacturer: text(&obj, tags::MANUFACTURER),
        icc_profile,
        concatenation,
        codec,
        frames,
        positions,
    })
}

/// One optical path at most, and brightfield where the illumination is said.
fn check_optical_paths(obj: &InMemDicomObject) -> Result<(), SlideError> {
    let paths = items(obj, tags::OPTICAL_PATH_SEQUENCE);
    let declared = int::<u64>(obj, tags::NUMBER_OF_OPTICAL_PATHS).unwrap_or(1);
    if declared > 1 || paths.len() > 1 {
        return Err(bad(format!(
            "{} optical paths (multiplexed or fluorescence imaging): only single-path brightfield slides are read",
            declared.max(paths.len() as u64)
        )));
    }
    let illumination = |o: &InMemDicomObject| {
        items(o, tags::ILLUMINATION_TYPE_CODE_SEQUENCE).first().and_then(|c| text(c, tags::CODE_VALUE))
    };
    let code = paths.first().and_then(illumination).or_else(|| illumination(obj));
    match code {
        Some(c) if c != BRIGHTFIELD => {
            Err(bad(format!("illumination type {c} is not brightfield (DCM 111744): only brightfield slides are read")))
        }
        _ => Ok(()),
    }
}

/// Pixel spacing in mm: the shared functional groups' Pixel Measures, else the top level's.
fn pixel_spacing_mm(obj: &InMemDicomObject) -> Option<f64> {
    let from = |o: &InMemDicomObject| float_in(o, tags::PIXEL_SPACING);
    items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE)
        .first()
        .and_then(|g| items(g, tags::PIXEL_MEASURES_SEQUENCE).first())
        .and_then(from)
        .or_else(|| from(obj))
}

fn bytes(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<u8>> {
    let v = obj.element_opt(tag).ok().flatten()?.to_bytes().ok()?;
    (!v.is_empty()).then(|| v.into_owned())
}

/// TILED_SPARSE: each frame's Column/Row Position In Total Image Pixel Matrix (1-based).
fn sparse_positions(obj: &InMemDicomObject, frame_count: u64) -> Result<Vec<(u64, u64)>, SlideError> {
    let groups = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if groups.len() as u64 != frame_count {
        return Err(bad(format!(
            "TILED_SPARSE with {} per-frame functional groups for {frame_count} frames",
            groups.len()
        )));
    }
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let p = items(g, tags::PLANE_POSITION_SLIDE_SEQUENCE)
                .first()
                .ok_or_else(|| bad(format!("frame {} has no Plane Position (Slide)", i + 1)))?;
            let c = int::<i64>(p, tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX);
            let r = int::<i64>(p, tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX);
            match (c, r) {
                (Some(c), Some(r)) if c >= 1 && r >= 1 => Ok(((c - 1) as u64, (r - 1) as u64)),
                _ => Err(bad(format!("frame {} has no valid column/row position in the pixel matrix", i + 1))),
            }
        })
        .collect()
}

/// The frames of encapsulated pixel data: one fragment each (the first item is the Basic
/// Offset Table). Every item lies inside the file (checked by `check_pixel_data_file` before).
fn fragments(file: &File, value_offset: u64, frame_count: u64) -> Result<Vec<(u64, u64)>, SlideError> {
    let mut out = Vec::new();
    let mut pos = value_offset;
    let mut first = true;
    loop {
        let mut h = [0u8; 8];
        file.read_exact_at(&mut h, pos)?;
        let (g, e) = (u16::from_le_bytes([h[0], h[1]]), u16::from_le_bytes([h[2], h[3]]));
        let len = u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]]));
        match (g, e) {
            (0xFFFE, 0xE0DD) => break,
            (0xFFFE, 0xE000) => {
                if !first {
                    if out.len() as u64 >= frame_count {
                        return Err(bad(format!(
                            "more pixel data fragments than its {frame_count} frames: frames split over fragments \
                             are not read"
                        )));
                    }
                    out.push((pos + 8, len));
                }
                first = false;
                pos += 8 + len;
            }
            _ => return Err(bad(format!("unexpected ({g:04X},{e:04X}) in the pixel data at byte {pos}"))),
        }
    }
    if out.len() as u64 != frame_count {
        return Err(bad(format!("{} pixel data fragments for {frame_count} frames", out.len())));
    }
    Ok(out)
}

/// The key that joins a DICOM slide's files: a digest of the Series Instance UID (UIDs are
/// identifiers under DICOM de-identification, so the UID itself is not kept in the state).
pub fn series_key(series_uid: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(series_uid.as_bytes());
    hex::encode(d.get(..8).unwrap_or(&[]))
}

impl WsiInstance {
    /// What ingest records about this one file: its level (a pyramid level) or its associated
    /// image (label, overview, thumbnail), and the series key that joins it to its slide.
    pub fn header(&self) -> SlideHeader {
        let (levels, associated) = match self.flavor {
            Flavor::Volume => (
                vec![SlideLevel {
                    width: self.total_columns,
                    height: self.total_rows,
                    tile_width: self.tile_width,
                    tile_height: self.tile_height,
                    tiles: self.total_columns.div_ceil(u64::from(self.tile_width))
                        * self.total_rows.div_ceil(u64::from(self.tile_height)),
                    compression: match self.codec {
                        FrameCodec::Jpeg => 7,
                        FrameCodec::Jpeg2000 { ycbcr, ht } => j2k_codes(ycbcr, ht).0,
                        FrameCodec::JpegLs => super::tiff::COMPRESSION_JPEG_LS,
                        FrameCodec::Native => 1,
                    },
                    downsample: 1.0,
                }],
                Vec::new(),
            ),
            other => (Vec::new(), vec![other.name().to_string()]),
        };
        SlideHeader {
            format: SlideFormat::DicomWsi,
            big_tiff: false,
            levels,
            associated,
            microns_per_pixel: self.microns_per_pixel,
            objective_power: None,
            scanner: self.manufacturer.clone(),
            dicom_series: Some(series_key(&self.series_uid)),
            members: Vec::new(),
        }
    }
}

/// A DICOM slide assembled from its instances.
pub struct WsiSeries {
    pub files: Vec<File>,
    pub header: SlideHeader,
    pub levels: Vec<LevelData>,
    /// The ICC profile of the slide's levels, if any.
    pub icc_profile: Option<Vec<u8>>,
}

/// Open the slide `path` belongs to: every DICOM file beside it (same folder) of the same series
/// is read, as OpenSlide does, and the pyramid is assembled from them.
pub fn open_series(path: &Path, limits: &Limits) -> Result<WsiSeries, SlideError> {
    let file = File::open(path)?;
    let first = read_instance(path, &file, limits)?;
    let mut instances = vec![first];
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let mut siblings: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .filter(|p| p.file_name() != path.file_name())
            .collect();
        siblings.sort();
        for p in siblings {
            let Ok(f) = File::open(&p) else { continue };
            if !is_dicom_wsi(&f) {
                continue;
            }
            // A sibling of another series is not ours. One that cannot be read fails the slide
            // unless its header proves it belongs to another series: a level still being copied
            // must hold the slide back, not leave a pyramid without it.
            match read_instance(&p, &f, limits) {
                Ok(i) if i.series_uid == instances[0].series_uid => instances.push(i),
                Ok(_) => {}
                Err(e) => {
                    let other = read_header_file(&f, limits).is_ok_and(|h| {
                        h.series_instance_uid.as_deref().is_some_and(|s| s != instances[0].series_uid.as_str())
                    });
                    if !other {
                        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                        return Err(match e {
                            SlideError::Incomplete(m) => SlideError::Incomplete(format!("{name}: {m}")),
                            SlideError::Io(e) => SlideError::Io(e),
                            other => bad(format!("{name}: {other}")),
                        });
                    }
                }
            }
        }
    }
    assemble(instances, limits)
}

/// Build the pyramid from the instances of one series.
pub fn assemble(instances: Vec<WsiInstance>, limits: &Limits) -> Result<WsiSeries, SlideError> {
    let mut associated: Vec<String> = Vec::new();
    let mut volumes: Vec<WsiInstance> = Vec::new();
    for i in instances {
        if i.flavor == Flavor::Volume {
            volumes.push(i);
        } else if !associated.iter().any(|a| a == i.flavor.name()) {
            associated.push(i.flavor.name().to_string());
        }
    }
    if volumes.is_empty() {
        return Err(SlideError::NoPyramid);
    }
    // The levels of a series share the slide: converters (the CMU-1 DICOM conversion among them)
    // write a frame of reference per level all the same. Pixels do not depend on it, so it is
    // noted, not refused, as OpenSlide does.
    if let Some(f) = volumes.first().and_then(|v| v.frame_of_reference_uid.clone())
        && volumes.iter().any(|v| v.frame_of_reference_uid.as_ref().is_some_and(|g| *g != f))
    {
        tracing::warn!(stage = "slide", "the DICOM slide's levels name different frames of reference");
    }
    // Levels from the largest down; instances of the same size are parts of one level.
    volumes.sort_by(|a, b| b.total_columns.cmp(&a.total_columns).then(b.total_rows.cmp(&a.total_rows)));
    let mut files = Vec::new();
    let mut levels: Vec<LevelData> = Vec::new();
    let mut header_levels: Vec<SlideLevel> = Vec::new();
    let mut icc_profile = None;
    let mut tiles_total = 0u64;
    let (w0, h0) = (volumes[0].total_columns, volumes[0].total_rows);
    let mut i = 0;
    while i < volumes.len() {
        let v0 = &volumes[i];
        let same = volumes[i..]
            .iter()
            .take_while(|v| (v.total_columns, v.total_rows) == (v0.total_columns, v0.total_rows))
            .count();
        let parts = &volumes[i..i + same];
        let (tw, th) = (v0.tile_width, v0.tile_height);
        if parts.iter().any(|p| (p.tile_width, p.tile_height) != (tw, th) || p.codec != v0.codec) {
            return Err(bad(format!(
                "the {}x{} level's files differ in frame size or encoding",
                v0.total_columns, v0.total_rows
            )));
        }
        let across = v0.total_columns.div_ceil(u64::from(tw));
        let down = v0.total_rows.div_ceil(u64::from(th));
        let tiles = across * down;
        tiles_total += tiles;
        if tiles_total > limits.max_slide_tiles {
            return Err(SlideError::OverLimit { what: "tiles", value: tiles_total, limit: limits.max_slide_tiles });
        }
        let n = usize::try_from(tiles).map_err(|_| bad("too many tiles"))?;
        let (mut offsets, mut counts, mut tile_files) = (vec![0u64; n], vec![0u64; n], vec![0u32; n]);
        for part in parts {
            let file_index = u32::try_from(files.len()).map_err(|_| bad("too many files"))?;
            files.push(File::open(&part.path)?);
            let base = part.concatenation.as_ref().map_or(0, |(_, off)| *off);
            for (k, (off, len)) in part.frames.iter().enumerate() {
                let tile = match &part.positions {
                    None => base + k as u64,
                    Some(pos) => {
                        let (c, r) = pos.get(k).copied().unwrap_or((u64::MAX, u64::MAX));
                        if c % u64::from(tw) != 0 || r % u64::from(th) != 0 {
                            return Err(bad(format!("frame {} at pixel ({c}, {r}) is not on the tile grid", k + 1)));
                        }
                        (r / u64::from(th)).saturating_mul(across).saturating_add(c / u64::from(tw))
                    }
                };
                // Frames past the grid (further focal planes or optical paths in TILED_FULL
                // order) were refused by the header checks; any other is a broken file.
                let Some(t) = usize::try_from(tile).ok().filter(|t| *t < n) else {
                    return Err(bad(format!("frame {} lies outside the {across}x{down} tile grid", k + 1)));
                };
                offsets[t] = *off;
                counts[t] = *len;
                tile_files[t] = file_index;
            }
        }
        let (compression, photometric) = match v0.codec {
            FrameCodec::Jpeg => (7, 0),
            FrameCodec::Jpeg2000 { ycbcr, ht } => j2k_codes(ycbcr, ht),
            FrameCodec::JpegLs => (super::tiff::COMPRESSION_JPEG_LS, 2),
            FrameCodec::Native => (1, 2),
        };
        icc_profile = icc_profile.or_else(|| v0.icc_profile.clone());
        let (w, h) = (v0.total_columns, v0.total_rows);
        header_levels.push(SlideLevel {
            width: w,
            height: h,
            tile_width: tw,
            tile_height: th,
            tiles,
            compression,
            // OpenSlide's: the mean of the two axes' ratios.
            downsample: (w0 as f64 / w as f64 + h0 as f64 / h as f64) / 2.0,
        });
        levels.push(LevelData {
            width: w,
            height: h,
            tile_width: tw,
            tile_height: th,
            compression,
            photometric,
            samples_per_pixel: 3,
            planar: 1,
            predictor: 1,
            jpeg_tables: None,
            tile_offsets: offsets,
            tile_counts: counts,
            tile_files,
            jpeg_colour_from_stream: v0.codec == FrameCodec::Jpeg,
        });
        i += same;
    }
    let header = SlideHeader {
        format: SlideFormat::DicomWsi,
        big_tiff: false,
        levels: header_levels,
        associated,
        microns_per_pixel: volumes[0].microns_per_pixel,
        objective_power: None,
        scanner: volumes[0].manufacturer.clone(),
        dicom_series: Some(series_key(&volumes[0].series_uid)),
        members: Vec::new(),
    };
    Ok(WsiSeries { files, header, levels, icc_profile })
}
