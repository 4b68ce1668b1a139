//! Reading the header of a DICOM file: Part 10 with or without preamble, or a raw data set.

use super::{DicomError, Encoding, ts};
use crate::limits::Limits;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions, file::ReadPreamble};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// How the bytes start: decides how the file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DicomLayout {
    /// 128-byte preamble + "DICM" + file meta group.
    Part10,
    /// File meta group without the preamble.
    MetaWithoutPreamble,
    /// A bare data set (no meta group): implicit VR LE, explicit VR LE or explicit VR BE.
    RawDataset { explicit_vr: bool, big_endian: bool },
}

/// Decide from the first bytes whether this is DICOM, and which layout. `None` if not DICOM.
pub fn sniff_dicom(head: &[u8]) -> Option<DicomLayout> {
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Some(DicomLayout::Part10);
    }
    if head.len() < 12 {
        return None;
    }
    let group = u16::from_le_bytes([head[0], head[1]]);
    let vr_like = head[4].is_ascii_uppercase() && head[5].is_ascii_uppercase();
    if group == 0x0002 && vr_like {
        return Some(DicomLayout::MetaWithoutPreamble);
    }
    // A raw data set starts with a low group (0008 usually) and ascending tags.
    if group == 0x0008 {
        if vr_like {
            return Some(DicomLayout::RawDataset { explicit_vr: true, big_endian: false });
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len < 0x1_0000 {
            return Some(DicomLayout::RawDataset { explicit_vr: false, big_endian: false });
        }
    }
    if u16::from_be_bytes([head[0], head[1]]) == 0x0008 && vr_like {
        return Some(DicomLayout::RawDataset { explicit_vr: true, big_endian: true });
    }
    None
}

/// The header values ingest and series selection need, under their DICOM keywords.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DicomHeader {
    #[serde(rename = "TransferSyntaxUID")]
    pub transfer_syntax_uid: String,
    #[serde(rename = "PatientID")]
    pub patient_id: Option<String>,
    #[serde(rename = "StudyInstanceUID")]
    pub study_instance_uid: Option<String>,
    #[serde(rename = "SeriesInstanceUID")]
    pub series_instance_uid: Option<String>,
    #[serde(rename = "SOPInstanceUID")]
    pub sop_instance_uid: Option<String>,
    #[serde(rename = "SOPClassUID")]
    pub sop_class_uid: Option<String>,
    pub modality: Option<String>,
    pub image_type: Vec<String>,
    pub series_description: Option<String>,
    pub series_number: Option<u32>,
    pub contrast_bolus_agent: Option<String>,
    pub slice_thickness: Option<f64>,
    pub image_position_patient: Option<[f64; 3]>,
    pub image_orientation_patient: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub rows: Option<u16>,
    pub columns: Option<u16>,
    pub number_of_frames: Option<u32>,
    pub samples_per_pixel: Option<u16>,
    pub photometric_interpretation: Option<String>,
    pub bits_allocated: Option<u16>,
    pub bits_stored: Option<u16>,
    pub pixel_representation: Option<u16>,
    pub rescale_slope: Option<f64>,
    pub rescale_intercept: Option<f64>,
    pub pixel_padding_value: Option<i64>,
    pub acquisition_date: Option<String>,
    pub acquisition_time: Option<String>,
    pub study_date: Option<String>,
    pub manufacturer: Option<String>,
    #[serde(rename = "FrameOfReferenceUID")]
    pub frame_of_reference_uid: Option<String>,
    /// Multi-frame images (Enhanced CT, SEG): each frame's plane from the shared and per-frame
    /// functional groups, in frame order. Empty for single-frame images.
    #[serde(rename = "Frames", skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<FramePlane>,
    /// Identifying study attributes, read for outputs that stay on site (the DICOM SR for the
    /// local PACS). Never serialised: they do not reach the state database, `inspect` or logs.
    #[serde(skip)]
    pub identity: StudyIdentity,
    #[serde(skip)]
    pub layout: Option<DicomLayout>,
}

impl DicomHeader {
    /// Decoded pixel data size implied by the header (native encoding), checked against limits.
    pub fn expected_native_bytes(&self, limits: &Limits) -> Result<Option<u64>, DicomError> {
        let (Some(rows), Some(cols)) = (self.rows, self.columns) else {
            return Ok(None);
        };
        let frames = u64::from(self.number_of_frames.unwrap_or(1).max(1));
        // A whole-slide image is never decoded whole: its frames are tiles, which the slide
        // reader bounds one by one (tile size, tile count: `slide::dicom_wsi`). The DICOM limits
        // are for images decoded in one piece, so they do not apply to it.
        let whole_slide = self.sop_class_uid.as_deref() == Some(super::sop_class::VL_WHOLE_SLIDE_MICROSCOPY);
        if !whole_slide && frames > u64::from(limits.max_dicom_frames) {
            return Err(DicomError::OverLimit {
                what: "NumberOfFrames",
                value: frames,
                limit: u64::from(limits.max_dicom_frames),
            });
        }
        let mut spp = u64::from(self.samples_per_pixel.unwrap_or(1).max(1));
        // 4:2:2 YCbCr stores two samples per pixel on average.
        if self.photometric_interpretation.as_deref().is_some_and(|p| p.ends_with("_422")) {
            spp = 2;
        }
        let bits = u64::from(self.bits_allocated.unwrap_or(16).max(1));
        // Saturating: every factor comes from the file, and their product can pass u64.
        let bits_total = [u64::from(cols), frames, spp, bits].iter().fold(u64::from(rows), |a, b| a.saturating_mul(*b));
        let bytes = bits_total.div_ceil(8);
        if !whole_slide && bytes > limits.max_dicom_pixel_bytes {
            return Err(DicomError::OverLimit {
                what: "decoded pixel data bytes",
                value: bytes,
                limit: limits.max_dicom_pixel_bytes,
            });
        }
        Ok(Some(bytes))
    }

    /// Whether the pixel data is encapsulated (compressed fragments) rather than native.
    pub fn is_encapsulated(&self) -> bool {
        !matches!(
            self.transfer_syntax_uid.as_str(),
            ts::IMPLICIT_VR_LE | ts::EXPLICIT_VR_LE | ts::EXPLICIT_VR_BE | ts::DEFLATED_EXPLICIT_VR_LE
        )
    }

    pub(crate) fn encoding(&self) -> Encoding {
        Encoding::for_transfer_syntax(&self.transfer_syntax_uid)
    }
}

/// One frame of a multi-frame image: its plane (Plane Position, Plane Orientation, Pixel
/// Measures), its rescale (Pixel Value Transformation) and, in a SEG, its segment. Per-frame
/// values override the shared ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FramePlane {
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_thickness: Option<f64>,
    pub rescale_slope: Option<f64>,
    pub rescale_intercept: Option<f64>,
    /// ReferencedSegmentNumber (SEG only).
    pub segment: Option<u16>,
}

/// The patient and study attributes a result object for the local PACS must repeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StudyIdentity {
    pub patient_name: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_time: Option<String>,
    pub referring_physician_name: Option<String>,
}

/// Read the header of a DICOM file (everything before Pixel Data). Never reads pixel data,
/// except for raw data sets without a meta group, which are parsed whole after a size check.
pub fn read_header(path: &Path, limits: &Limits) -> Result<DicomHeader, DicomError> {
    read_header_file(&std::fs::File::open(path)?, limits)
}

/// As [`read_header`], from a file the caller opened (ingest opens files beneath the share).
pub fn read_header_file(file: &File, limits: &Limits) -> Result<DicomHeader, DicomError> {
    let (obj, ts_uid, layout) = read_object(file, limits)?;
    header_of(&obj, ts_uid, layout, limits)
}

/// The header of an object [`read_object`] read, its claimed sizes checked, so nothing later
/// allocates from an absurd header.
pub(crate) fn header_of(
    obj: &InMemDicomObject,
    ts_uid: String,
    layout: DicomLayout,
    limits: &Limits,
) -> Result<DicomHeader, DicomError> {
    let mut header = extract(obj);
    header.transfer_syntax_uid = ts_uid;
    header.layout = Some(layout);
    header.expected_native_bytes(limits)?;
    Ok(header)
}

/// The data set up to Pixel Data (not included), its transfer syntax and the file's layout, read
/// through the length guard and under the allocation cap: the one way this crate parses a DICOM
/// header (CT, SEG, RTSTRUCT and whole-slide images alike).
pub(crate) fn read_object(file: &File, limits: &Limits) -> Result<(InMemDicomObject, String, DicomLayout), DicomError> {
    let mut head = [0u8; 256];
    let n = read_prefix(file, &mut head)?;
    let layout = sniff_dicom(&head[..n]).ok_or(DicomError::NotDicom)?;
    // The guard walks the meta group; its transfer syntax and data-set offset serve the fallback.
    let (meta_ts, dataset_offset) = guard_lengths(file, layout, limits)?;
    let mut reader = file;
    // The backstop for where dicom-rs and the guard read a length differently (crate::memory).
    let cap = crate::memory::read_cap(file.metadata()?.len());
    let (obj, ts_uid) = match layout {
        DicomLayout::Part10 | DicomLayout::MetaWithoutPreamble => {
            // dicom-object's reader expects "DICM" then the meta group.
            let obj = if layout == DicomLayout::Part10 {
                reader.seek(SeekFrom::Start(128))?;
                crate::memory::with_allocation_cap(cap, || {
                    OpenFileOptions::new()
                        .read_preamble(ReadPreamble::Never)
                        .read_until(tags::PIXEL_DATA)
                        .from_reader(BufReader::new(reader))
                })
            } else {
                reader.seek(SeekFrom::Start(0))?;
                crate::memory::with_allocation_cap(cap, || {
                    OpenFileOptions::new()
                        .read_preamble(ReadPreamble::Never)
                        .read_until(tags::PIXEL_DATA)
                        .from_reader(BufReader::new(std::io::Cursor::new(*b"DICM").chain(reader)))
                })
            };
            match obj {
                Ok(obj) => {
                    let ts_uid = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
                    (obj.into_inner(), ts_uid)
                }
                // Vendors write meta groups dicom-rs rejects (no group length, odd values):
                // walk the meta group by hand and read the data set with its transfer syntax.
                Err(_) => (read_dataset_at(file, dataset_offset, &meta_ts, limits)?, meta_ts),
            }
        }
        DicomLayout::RawDataset { .. } => (read_dataset_at(file, 0, &meta_ts, limits)?, meta_ts),
    };
    Ok((obj, ts_uid, layout))
}

/// Refuse declared lengths beyond the data before dicom-rs allocates them (see [`super::guard`]).
/// Returns the transfer syntax and the offset where the data set begins.
fn guard_lengths(file: &File, layout: DicomLayout, limits: &Limits) -> Result<(String, u64), DicomError> {
    let (ts_uid, offset) = match layout {
        DicomLayout::Part10 | DicomLayout::MetaWithoutPreamble => {
            let start = if layout == DicomLayout::Part10 { 132 } else { 0 };
            walk_meta_group(file, start)
                .ok_or_else(|| DicomError::Parse("file meta group unreadable or without a transfer syntax".into()))?
        }
        DicomLayout::RawDataset { explicit_vr, big_endian } => {
            (raw_transfer_syntax(explicit_vr, big_endian).to_string(), 0)
        }
    };
    if ts_uid == ts::DEFLATED_EXPLICIT_VR_LE {
        // Inflate with a cap (a deflate bomb stops at the limit), then walk the inflated bytes.
        let cap = limits.max_dicom_pixel_bytes.saturating_add(16 << 20);
        let mut reader = file;
        reader.seek(SeekFrom::Start(offset))?;
        let mut inflated = Vec::new();
        let n = flate2::read::DeflateDecoder::new(BufReader::new(reader)).take(cap + 1).read_to_end(&mut inflated)?;
        if n as u64 > cap {
            return Err(DicomError::OverLimit { what: "inflated data set bytes", value: n as u64, limit: cap });
        }
        super::guard::check_lengths(inflated.as_slice(), 0, true, false)?;
        return Ok((ts_uid, offset));
    }
    let enc = super::Encoding::for_transfer_syntax(&ts_uid);
    super::guard::check_lengths(&super::guard::WindowedFile::new(file), offset, enc.explicit_vr, enc.big_endian)?;
    Ok((ts_uid, offset))
}

/// The transfer syntax of a raw data set (no meta group) from its sniffed encoding.
fn raw_transfer_syntax(explicit_vr: bool, big_endian: bool) -> &'static str {
    match (explicit_vr, big_endian) {
        (false, _) => ts::IMPLICIT_VR_LE,
        (true, false) => ts::EXPLICIT_VR_LE,
        (true, true) => ts::EXPLICIT_VR_BE,
    }
}

/// Parse a whole data set starting at `offset` with the given transfer syntax (after a size check:
/// this path reads pixel data too).
fn read_dataset_at(file: &File, offset: u64, ts_uid: &str, limits: &Limits) -> Result<InMemDicomObject, DicomError> {
    let size = file.metadata()?.len();
    let cap = limits.max_dicom_pixel_bytes.saturating_add(16 << 20);
    if size > cap {
        return Err(DicomError::OverLimit {
            what: "DICOM file bytes without a readable meta group",
            value: size,
            limit: cap,
        });
    }
    let registry = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let ts = dicom_encoding::TransferSyntaxIndex::get(&registry, ts_uid)
        .ok_or_else(|| DicomError::Parse(format!("transfer syntax {ts_uid} is not supported")))?;
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    let cap = crate::memory::read_cap(file.metadata()?.len());
    let obj =
        crate::memory::with_allocation_cap(cap, || InMemDicomObject::read_dataset_with_ts(BufReader::new(reader), ts))
            .map_err(|e| DicomError::Parse(e.to_string()))?;
    Ok(obj)
}

/// What the file meta group says that the readers need before parsing the data set.
#[derive(Debug, Clone, Default)]
pub(crate) struct MetaGroup {
    /// Transfer Syntax UID (0002,0010).
    pub ts_uid: Option<String>,
    /// Media Storage SOP Class UID (0002,0002).
    pub sop_class: Option<String>,
    /// Where the data set begins.
    pub data_start: u64,
}

/// Walk the (explicit VR little endian) file meta group from `start` (132 after a preamble, 0
/// without). None where an element cannot be read or is not plausibly a meta element.
pub(crate) fn read_meta_group(file: &File, start: u64) -> Option<MetaGroup> {
    use std::os::unix::fs::FileExt;
    let mut meta = MetaGroup { data_start: start, ..MetaGroup::default() };
    let mut pos = start;
    for _ in 0..64 {
        let mut h = [0u8; 8];
        file.read_exact_at(&mut h, pos).ok()?;
        let group = u16::from_le_bytes([h[0], h[1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([h[2], h[3]]);
        // Not a DICOM VR: dicom-rs would read a 4-byte length where the writer may have meant a
        // 2-byte one (found by fuzzing: 775 MB allocated for a 644-byte file), so give up here.
        let (hdr, len) = if super::guard::long_length(&h[4..6])? {
            let mut l = [0u8; 4];
            file.read_exact_at(&mut l, pos + 8).ok()?;
            (12u64, u64::from(u32::from_le_bytes(l)))
        } else {
            (8u64, u64::from(u16::from_le_bytes([h[6], h[7]])))
        };
        if len > 1024 {
            return None;
        }
        if element == 0x0010 || element == 0x0002 {
            let mut v = vec![0u8; len as usize];
            file.read_exact_at(&mut v, pos + hdr).ok()?;
            let v = Some(String::from_utf8_lossy(&v).trim_end_matches(['\0', ' ']).to_string());
            if element == 0x0010 { meta.ts_uid = v } else { meta.sop_class = v }
        }
        pos += hdr + len;
    }
    meta.data_start = pos;
    Some(meta)
}

/// The transfer syntax UID and the offset where the data set begins.
fn walk_meta_group(file: &File, start: u64) -> Option<(String, u64)> {
    let meta = read_meta_group(file, start)?;
    Some((meta.ts_uid?, meta.data_start))
}

/// Read the first bytes of a file without moving its cursor.
pub fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        let k = file.read_at(&mut buf[n..], n as u64)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

fn extract(obj: &InMemDicomObject) -> DicomHeader {
    let mut h = extract_top_level(obj);
    // A multi-frame image keeps its plane in the functional groups: the first frame's stands in
    // for the image-level values series selection reads (orientation, spacing, thickness,
    // rescale). Loading uses each frame's own.
    if let Some(f) = h.frames.first().cloned() {
        h.image_orientation_patient = h.image_orientation_patient.or(f.orientation);
        h.pixel_spacing = h.pixel_spacing.or(f.pixel_spacing);
        h.slice_thickness = h.slice_thickness.or(f.slice_thickness);
        h.rescale_slope = h.rescale_slope.or(f.rescale_slope);
        h.rescale_intercept = h.rescale_intercept.or(f.rescale_intercept);
    }
    h
}

fn extract_top_level(obj: &InMemDicomObject) -> DicomHeader {
    let s = |tag| text(obj, tag);
    DicomHeader {
        transfer_syntax_uid: String::new(),
        patient_id: s(tags::PATIENT_ID),
        study_instance_uid: s(tags::STUDY_INSTANCE_UID),
        series_instance_uid: s(tags::SERIES_INSTANCE_UID),
        sop_instance_uid: s(tags::SOP_INSTANCE_UID),
        sop_class_uid: s(tags::SOP_CLASS_UID),
        modality: s(tags::MODALITY),
        image_type: multi_text(obj, tags::IMAGE_TYPE),
        series_description: s(tags::SERIES_DESCRIPTION),
        series_number: int(obj, tags::SERIES_NUMBER),
        contrast_bolus_agent: s(tags::CONTRAST_BOLUS_AGENT),
        slice_thickness: floats(obj, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()),
        image_position_patient: floats(obj, tags::IMAGE_POSITION_PATIENT)
            .and_then(|v| <[f64; 3]>::try_from(v.as_slice()).ok()),
        image_orientation_patient: floats(obj, tags::IMAGE_ORIENTATION_PATIENT)
            .and_then(|v| <[f64; 6]>::try_from(v.as_slice()).ok()),
        pixel_spacing: floats(obj, tags::PIXEL_SPACING).and_then(|v| <[f64; 2]>::try_from(v.as_slice()).ok()),
        rows: int(obj, tags::ROWS),
        columns: int(obj, tags::COLUMNS),
        number_of_frames: int(obj, tags::NUMBER_OF_FRAMES),
        samples_per_pixel: int(obj, tags::SAMPLES_PER_PIXEL),
        photometric_interpretation: s(tags::PHOTOMETRIC_INTERPRETATION),
        bits_allocated: int(obj, tags::BITS_ALLOCATED),
        bits_stored: int(obj, tags::BITS_STORED),
        pixel_representation: int(obj, tags::PIXEL_REPRESENTATION),
        rescale_slope: floats(obj, tags::RESCALE_SLOPE).and_then(|v| v.first().copied()),
        rescale_intercept: floats(obj, tags::RESCALE_INTERCEPT).and_then(|v| v.first().copied()),
        pixel_padding_value: int(obj, tags::PIXEL_PADDING_VALUE),
        acquisition_date: s(tags::ACQUISITION_DATE),
        acquisition_time: s(tags::ACQUISITION_TIME),
        study_date: s(tags::STUDY_DATE),
        manufacturer: s(tags::MANUFACTURER),
        frame_of_reference_uid: s(tags::FRAME_OF_REFERENCE_UID),
        frames: frame_planes(obj),
        identity: StudyIdentity {
            patient_name: s(tags::PATIENT_NAME),
            patient_birth_date: s(tags::PATIENT_BIRTH_DATE),
            patient_sex: s(tags::PATIENT_SEX),
            accession_number: s(tags::ACCESSION_NUMBER),
            study_id: s(tags::STUDY_ID),
            study_time: s(tags::STUDY_TIME),
            referring_physician_name: s(tags::REFERRING_PHYSICIAN_NAME),
        },
        layout: None,
    }
}

/// The items of a sequence (none when absent or not a sequence).
pub(crate) fn items(obj: &InMemDicomObject, tag: dicom_core::Tag) -> &[InMemDicomObject] {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.items()).unwrap_or(&[])
}

/// Each frame's plane from the functional groups: the shared group first, then the frame's own.
fn frame_planes(obj: &InMemDicomObject) -> Vec<FramePlane> {
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.is_empty() {
        return Vec::new();
    }
    let mut shared = FramePlane::default();
    if let Some(group) = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first() {
        apply_functional_group(group, &mut shared);
    }
    per_frame
        .iter()
        .map(|group| {
            let mut plane = shared.clone();
            apply_functional_group(group, &mut plane);
            plane
        })
        .collect()
}

fn apply_functional_group(group: &InMemDicomObject, plane: &mut FramePlane) {
    if let Some(item) = items(group, tags::PLANE_POSITION_SEQUENCE).first()
        && let Some(p) =
            floats(item, tags::IMAGE_POSITION_PATIENT).and_then(|v| <[f64; 3]>::try_from(v.as_slice()).ok())
    {
        plane.position = Some(p);
    }
    if let Some(item) = items(group, tags::PLANE_ORIENTATION_SEQUENCE).first()
        && let Some(o) =
            floats(item, tags::IMAGE_ORIENTATION_PATIENT).and_then(|v| <[f64; 6]>::try_from(v.as_slice()).ok())
    {
        plane.orientation = Some(o);
    }
    if let Some(item) = items(group, tags::PIXEL_MEASURES_SEQUENCE).first() {
        if let Some(ps) = floats(item, tags::PIXEL_SPACING).and_then(|v| <[f64; 2]>::try_from(v.as_slice()).ok()) {
            plane.pixel_spacing = Some(ps);
        }
        if let Some(t) = floats(item, tags::SLICE_THICKNESS).and_then(|v| v.first().copied()) {
            plane.slice_thickness = Some(t);
        }
    }
    if let Some(item) = items(group, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE).first() {
        if let Some(v) = floats(item, tags::RESCALE_SLOPE).and_then(|v| v.first().copied()) {
            plane.rescale_slope = Some(v);
        }
        if let Some(v) = floats(item, tags::RESCALE_INTERCEPT).and_then(|v| v.first().copied()) {
            plane.rescale_intercept = Some(v);
        }
    }
    if let Some(item) = items(group, tags::SEGMENT_IDENTIFICATION_SEQUENCE).first()
        && let Some(n) = int::<u16>(item, tags::REFERENCED_SEGMENT_NUMBER)
    {
        plane.segment = Some(n);
    }
}

pub(crate) fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let v = obj.element_opt(tag).ok().flatten()?.to_str().ok()?;
    let t = v.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!t.is_empty()).then(|| t.to_string())
}

pub(crate) fn multi_text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<String> {
    text(obj, tag).map(|s| s.split('\\').map(|p| p.trim().to_ascii_uppercase()).collect()).unwrap_or_default()
}

pub(crate) fn floats(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    let v = obj.element_opt(tag).ok().flatten()?.to_multi_float64().ok()?;
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

/// The first value of a numeric element.
pub(crate) fn float_in(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    floats(obj, tag).and_then(|v| v.first().copied())
}

pub(crate) fn int<T: num_like::FromI64>(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<T> {
    let v = obj.element_opt(tag).ok().flatten()?.to_int::<i64>().ok()?;
    T::from_i64(v)
}

pub(crate) mod num_like {
    /// Range-checked conversion from i64 (a negative or oversized Rows is treated as absent).
    pub trait FromI64: Sized {
        fn from_i64(v: i64) -> Option<Self>;
    }
    impl FromI64 for u16 {
        fn from_i64(v: i64) -> Option<Self> {
            u16::try_from(v).ok()
        }
    }
    impl FromI64 for i64 {
        fn from_i64(v: i64) -> Option<Self> {
            Some(v)
        }
    }
    impl FromI64 for u32 {
        fn from_i64(v: i64) -> Option<Self> {
            u32::try_from(v).ok()
        }
    }
    impl FromI64 for u64 {
        fn from_i64(v: i64) -> Option<Self> {
            u64::try_from(v).ok()
        }
    }
}
