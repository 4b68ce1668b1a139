//! Writes CT series as real DICOM Part 10 files through dicom-object: the fixtures of tests and
//! the demo case. Stored values are HU + 1024 (unsigned), RescaleIntercept -1024, as many
//! scanners do, so readers must apply the rescale to get Hounsfield units back.

use super::{DicomError, sop_class, ts};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::{Path, PathBuf};

/// Hounsfield units at (column, row, slice): shared so a generated patient can carry its own.
pub type HuFn = std::sync::Arc<dyn Fn(u32, u32, u32) -> i16 + Send + Sync>;

/// What series to write. Geometry is in patient coordinates (LPS), millimetres.
#[derive(Clone)]
pub struct CtSeriesSpec {
    pub patient_id: String,
    pub patient_name: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub series_description: String,
    /// Empty for a non-contrast series.
    pub contrast_bolus_agent: String,
    pub image_type: Vec<String>,
    pub modality: String,
    pub rows: u16,
    pub columns: u16,
    pub slices: u32,
    /// Row spacing, column spacing (mm).
    pub pixel_spacing: [f64; 2],
    /// Distance between slice centres along the normal (mm).
    pub slice_spacing: f64,
    pub slice_thickness: f64,
    /// Position of the first voxel of the first slice.
    pub origin: [f64; 3],
    /// Row direction cosines then column direction cosines.
    pub orientation: [f64; 6],
    pub study_date: String,
    /// Identifying attributes real exports carry (tests plant canaries in them).
    pub patient_birth_date: String,
    pub accession_number: String,
    pub institution_name: String,
    pub referring_physician_name: String,
    pub study_description: String,
    /// Explicit or implicit VR little endian.
    pub transfer_syntax: &'static str,
    /// Write files in this order of slice index (tests shuffle; InstanceNumber follows it too).
    pub write_order: Option<Vec<u32>>,
    /// Hounsfield units at (column, row, slice).
    pub hu: HuFn,
}

impl CtSeriesSpec {
    /// A small axial contrast series with sensible defaults; change fields as needed.
    pub fn axial(patient_id: &str, study_uid: &str, series_uid: &str, slices: u32) -> Self {
        CtSeriesSpec {
            patient_id: patient_id.into(),
            patient_name: "DOE^JANE".into(),
            study_instance_uid: study_uid.into(),
            series_instance_uid: series_uid.into(),
            series_description: "ABDOMEN PORTAL VENOUS 2.0".into(),
            contrast_bolus_agent: "IOHEXOL".into(),
            image_type: vec!["ORIGINAL".into(), "PRIMARY".into(), "AXIAL".into()],
            modality: "CT".into(),
            rows: 64,
            columns: 64,
            slices,
            pixel_spacing: [0.7, 0.7],
            slice_spacing: 2.0,
            slice_thickness: 2.0,
            origin: [-22.4, -22.4, 100.0],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            study_date: "20260301".into(),
            patient_birth_date: "19600101".into(),
            accession_number: "ACC0001".into(),
            institution_name: "EXAMPLE HOSPITAL".into(),
            referring_physician_name: "SMITH^JOHN".into(),
            study_description: "CT ABDOMEN PELVIS WITH CONTRAST".into(),
            transfer_syntax: ts::EXPLICIT_VR_LE,
            write_order: None,
            hu: std::sync::Arc::new(phantom_hu),
        }
    }

    fn normal(&self) -> [f64; 3] {
        let r = [self.orientation[0], self.orientation[1], self.orientation[2]];
        let c = [self.orientation[3], self.orientation[4], self.orientation[5]];
        [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    }

    /// ImagePositionPatient of slice `k`.
    pub fn position(&self, k: u32) -> [f64; 3] {
        let n = self.normal();
        let d = f64::from(k) * self.slice_spacing;
        [self.origin[0] + n[0] * d, self.origin[1] + n[1] * d, self.origin[2] + n[2] * d]
    }
}

/// A water cylinder with a contrast-enhanced "liver" blob: a recognisable abdomen-like phantom.
pub fn phantom_hu(x: u32, y: u32, z: u32) -> i16 {
    let (cx, cy) = (f64::from(x) - 32.0, f64::from(y) - 32.0);
    if cx * cx + cy * cy > 28.0 * 28.0 {
        -1000
    } else if phantom_liver(x, y, z) {
        110
    } else {
        40
    }
}

/// The phantom's "liver" blob (a disc of radius 10 centred at column 24, row 26 in every slice).
pub fn phantom_liver(x: u32, y: u32, _z: u32) -> bool {
    let (cx, cy) = (f64::from(x) - 32.0, f64::from(y) - 32.0);
    (cx + 8.0).powi(2) + (cy + 6.0).powi(2) < 100.0
}

/// A size-independent texture (benchmarks): body-like values that vary with every coordinate.
pub fn texture_hu(x: u32, y: u32, z: u32) -> i16 {
    ((x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ z.wrapping_mul(7)) % 1400) as i16 - 900
}

pub use super::uid_from;

/// Write the series into `dir` as `IM<instance>.dcm`; returns the paths in write order.
pub fn write_ct_series(dir: &Path, spec: &CtSeriesSpec) -> Result<Vec<PathBuf>, DicomError> {
    std::fs::create_dir_all(dir)?;
    let order: Vec<u32> = spec.write_order.clone().unwrap_or_else(|| (0..spec.slices).collect());
    let mut out = Vec::with_capacity(order.len());
    for (i, &k) in order.iter().enumerate() {
        let instance = i as u32 + 1;
        let sop_uid = uid_from(&format!("{}/{k}", spec.series_instance_uid));
        let obj = slice_object(spec, k, instance, &sop_uid);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class::CT_IMAGE)
            .media_storage_sop_instance_uid(sop_uid.as_str())
            .transfer_syntax(spec.transfer_syntax)
            .implementation_class_uid(uid_from("crlm-edge implementation"))
            .implementation_version_name("CRLM_EDGE_01")
            .build()
            .map_err(|e| DicomError::Parse(e.to_string()))?;
        let file = obj.with_exact_meta(meta);
        let path = dir.join(format!("IM{instance:04}.dcm"));
        file.write_to_file(&path).map_err(|e| DicomError::Parse(e.to_string()))?;
        out.push(path);
    }
    Ok(out)
}

pub(crate) fn put_str(o: &mut InMemDicomObject, tag: dicom_core::Tag, vr: VR, v: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn put_ds(o: &mut InMemDicomObject, tag: dicom_core::Tag, values: &[f64]) {
    o.put(DataElement::new(tag, VR::DS, PrimitiveValue::Strs(values.iter().map(|v| fmt_ds(*v)).collect())));
}

pub(crate) fn put_u16(o: &mut InMemDicomObject, tag: dicom_core::Tag, v: u16) {
    o.put(DataElement::new(tag, VR::US, dicom_value!(U16, [v])));
}

pub(crate) fn put_seq(o: &mut InMemDicomObject, tag: dicom_core::Tag, items: Vec<InMemDicomObject>) {
    o.put(DataElement::new(tag, VR::SQ, dicom_core::value::DataSetSequence::from(items)));
}

pub(crate) fn item(f: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    f(&mut o);
    o
}

/// The frame of reference every object written for `spec` shares.
pub fn frame_of_reference_uid(spec: &CtSeriesSpec) -> String {
    uid_from(&format!("{}/for", spec.study_instance_uid))
}

/// Patient, study and equipment attributes shared by every object written for `spec`.
fn patient_and_study(o: &mut InMemDicomObject, spec: &CtSeriesSpec, sop_class_uid: &str, sop_uid: &str) {
    let s = put_str;
    s(o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    s(o, tags::SOP_CLASS_UID, VR::UI, sop_class_uid);
    s(o, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    s(o, tags::STUDY_DATE, VR::DA, &spec.study_date);
    s(o, tags::STUDY_TIME, VR::TM, "101000");
    s(o, tags::ACCESSION_NUMBER, VR::SH, &spec.accession_number);
    s(o, tags::STUDY_ID, VR::SH, "1");
    s(o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, &spec.referring_physician_name);
    s(o, tags::STUDY_DESCRIPTION, VR::LO, &spec.study_description);
    s(o, tags::PATIENT_NAME, VR::PN, &spec.patient_name);
    s(o, tags::PATIENT_ID, VR::LO, &spec.patient_id);
    s(o, tags::PATIENT_BIRTH_DATE, VR::DA, &spec.patient_birth_date);
    s(o, tags::PATIENT_SEX, VR::CS, "F");
    s(o, tags::MANUFACTURER, VR::LO, "CRLM-EDGE SYNTHETIC");
    s(o, tags::INSTITUTION_NAME, VR::LO, &spec.institution_name);
    s(o, tags::STUDY_INSTANCE_UID, VR::UI, &spec.study_instance_uid);
    s(o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_reference_uid(spec));
}

fn write_object(
    path: &Path,
    obj: InMemDicomObject,
    sop_class_uid: &str,
    sop_uid: &str,
    ts_uid: &str,
) -> Result<(), DicomError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(ts_uid)
        .implementation_class_uid(uid_from("crlm-edge implementation"))
        .implementation_version_name("CRLM_EDGE_01")
        .build()
        .map_err(|e| DicomError::Parse(e.to_string()))?;
    obj.with_exact_meta(meta).write_to_file(path).map_err(|e| DicomError::Parse(e.to_string()))
}

/// Stored value of a HU (HU + 1024, 12 bits), as the series writer stores it.
fn stored(hu: i16) -> u16 {
    (i32::from(hu) + 1024).clamp(0, 4095) as u16
}

/// Image Pixel attributes of a multi-frame greyscale image on the series' grid.
fn put_multi_frame_pixel_module(
    o: &mut InMemDicomObject,
    spec: &CtSeriesSpec,
    frames: usize,
    allocated: u16,
    stored: u16,
) {
    put_str(o, tags::NUMBER_OF_FRAMES, VR::IS, &frames.to_string());
    put_u16(o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(o, tags::ROWS, spec.rows);
    put_u16(o, tags::COLUMNS, spec.columns);
    put_u16(o, tags::BITS_ALLOCATED, allocated);
    put_u16(o, tags::BITS_STORED, stored);
    put_u16(o, tags::HIGH_BIT, stored - 1);
    put_u16(o, tags::PIXEL_REPRESENTATION, 0);
}

/// The shared functional groups every frame of the series' grid has: orientation and spacing.
fn put_plane_groups(g: &mut InMemDicomObject, spec: &CtSeriesSpec) {
    put_seq(
        g,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![item(|i| put_ds(i, tags::IMAGE_ORIENTATION_PATIENT, &spec.orientation))],
    );
    put_seq(
        g,
        tags::PIXEL_MEASURES_SEQUENCE,
        vec![item(|i| {
            put_ds(i, tags::PIXEL_SPACING, &spec.pixel_spacing);
            put_ds(i, tags::SLICE_THICKNESS, &[spec.slice_thickness]);
        })],
    );
}

/// The per-frame Plane Position of slice `k`.
fn put_plane_position(g: &mut InMemDicomObject, spec: &CtSeriesSpec, k: u32) {
    put_seq(
        g,
        tags::PLANE_POSITION_SEQUENCE,
        vec![item(|i| put_ds(i, tags::IMAGE_POSITION_PATIENT, &spec.position(k)))],
    );
}

/// Write the series as one Enhanced CT Image (multi-frame) file: frames in `write_order`, each
/// placed by its Plane Position functional group; orientation, spacing and rescale shared.
pub fn write_enhanced_ct(path: &Path, spec: &CtSeriesSpec) -> Result<(), DicomError> {
    let order: Vec<u32> = spec.write_order.clone().unwrap_or_else(|| (0..spec.slices).collect());
    let sop_uid = uid_from(&format!("{}/enhanced", spec.series_instance_uid));
    let mut o = InMemDicomObject::new_empty();
    patient_and_study(&mut o, spec, sop_class::ENHANCED_CT_IMAGE, &sop_uid);
    put_ct_series(&mut o, spec, "3", 1);
    put_multi_frame_pixel_module(&mut o, spec, order.len(), 16, 12);
    let shared = item(|g| {
        put_plane_groups(g, spec);
        put_seq(
            g,
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            vec![item(|i| {
                put_str(i, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
                put_str(i, tags::RESCALE_SLOPE, VR::DS, "1");
                put_str(i, tags::RESCALE_TYPE, VR::LO, "HU");
            })],
        );
    });
    put_seq(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
    let per_frame = order.iter().map(|&k| item(|g| put_plane_position(g, spec, k))).collect();
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    let mut px: Vec<u16> = Vec::with_capacity(usize::from(spec.rows) * usize::from(spec.columns) * order.len());
    for &k in &order {
        push_stored_slice(&mut px, spec, k);
    }
    o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into())));
    write_object(path, o, sop_class::ENHANCED_CT_IMAGE, &sop_uid, spec.transfer_syntax)
}

/// Write a BINARY DICOM SEG on the series' grid with one segment, `label`, set where `mask` is
/// true. Like dcmqi, only slices with set pixels get a frame; frames are bit-packed without byte
/// alignment (as the standard packs them) and placed by their Plane Position.
pub fn write_segmentation(
    path: &Path,
    spec: &CtSeriesSpec,
    label: &str,
    mask: &dyn Fn(u32, u32, u32) -> bool,
) -> Result<(), DicomError> {
    let sop_uid = uid_from(&format!("{}/seg/{label}", spec.series_instance_uid));
    let (rows, cols) = (u32::from(spec.rows), u32::from(spec.columns));
    let slices: Vec<u32> = (0..spec.slices).filter(|&k| (0..rows).any(|y| (0..cols).any(|x| mask(x, y, k)))).collect();
    let mut o = InMemDicomObject::new_empty();
    patient_and_study(&mut o, spec, sop_class::SEGMENTATION, &sop_uid);
    put_str(&mut o, tags::MODALITY, VR::CS, "SEG");
    put_str(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "Segmentation");
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &uid_from(&format!("{}/seg-series", spec.series_instance_uid)));
    put_str(&mut o, tags::SERIES_NUMBER, VR::IS, "99");
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    o.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["DERIVED".into(), "PRIMARY".into()].into()),
    ));
    put_str(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_multi_frame_pixel_module(&mut o, spec, slices.len(), 1, 1);
    put_seq(
        &mut o,
        tags::SEGMENT_SEQUENCE,
        vec![item(|s| {
            put_u16(s, tags::SEGMENT_NUMBER, 1);
            put_str(s, tags::SEGMENT_LABEL, VR::LO, label);
            put_str(s, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "MANUAL");
        })],
    );
    put_seq(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![item(|g| put_plane_groups(g, spec))]);
    let per_frame = slices
        .iter()
        .map(|&k| {
            item(|g| {
                put_plane_position(g, spec, k);
                put_seq(
                    g,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item(|i| put_u16(i, tags::REFERENCED_SEGMENT_NUMBER, 1))],
                );
            })
        })
        .collect();
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    let plane = (rows * cols) as usize;
    let mut bits = vec![0u8; (plane * slices.len()).div_ceil(8)];
    for (f, &k) in slices.iter().enumerate() {
        for y in 0..rows {
            for x in 0..cols {
                if mask(x, y, k) {
                    let bit = f * plane + (y * cols + x) as usize;
                    bits[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
    }
    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(bits.into())));
    write_object(path, o, sop_class::SEGMENTATION, &sop_uid, ts::EXPLICIT_VR_LE)
}

/// Write an RTSTRUCT with one closed planar contour per (label, points) entry, in the series'
/// frame of reference.
pub fn write_structure_set(
    path: &Path,
    spec: &CtSeriesSpec,
    contours: &[(&str, Vec<[f64; 3]>)],
) -> Result<(), DicomError> {
    let sop_uid = uid_from(&format!("{}/rtstruct", spec.series_instance_uid));
    let mut o = InMemDicomObject::new_empty();
    patient_and_study(&mut o, spec, sop_class::RT_STRUCTURE_SET, &sop_uid);
    put_str(&mut o, tags::MODALITY, VR::CS, "RTSTRUCT");
    put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &uid_from(&format!("{}/rt-series", spec.series_instance_uid)));
    put_str(&mut o, tags::STRUCTURE_SET_LABEL, VR::SH, "CRLM");
    let for_uid = frame_of_reference_uid(spec);
    let rois = contours
        .iter()
        .enumerate()
        .map(|(i, (label, _))| {
            item(|r| {
                put_str(r, tags::ROI_NUMBER, VR::IS, &(i + 1).to_string());
                put_str(r, tags::REFERENCED_FRAME_OF_REFERENCE_UID, VR::UI, &for_uid);
                put_str(r, tags::ROI_NAME, VR::LO, label);
            })
        })
        .collect();
    put_seq(&mut o, tags::STRUCTURE_SET_ROI_SEQUENCE, rois);
    let roi_contours = contours
        .iter()
        .enumerate()
        .map(|(i, (_, points))| {
            item(|r| {
                put_str(r, tags::REFERENCED_ROI_NUMBER, VR::IS, &(i + 1).to_string());
                put_seq(
                    r,
                    tags::CONTOUR_SEQUENCE,
                    vec![item(|c| {
                        put_str(c, tags::CONTOUR_GEOMETRIC_TYPE, VR::CS, "CLOSED_PLANAR");
                        put_str(c, tags::NUMBER_OF_CONTOUR_POINTS, VR::IS, &points.len().to_string());
                        put_ds(c, tags::CONTOUR_DATA, &points.iter().flatten().copied().collect::<Vec<_>>());
                    })],
                );
            })
        })
        .collect();
    put_seq(&mut o, tags::ROI_CONTOUR_SEQUENCE, roi_contours);
    write_object(path, o, sop_class::RT_STRUCTURE_SET, &sop_uid, ts::EXPLICIT_VR_LE)
}

fn slice_object(spec: &CtSeriesSpec, k: u32, instance: u32, sop_uid: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    patient_and_study(&mut o, spec, sop_class::CT_IMAGE, sop_uid);
    put_ct_series(&mut o, spec, "2", instance);
    put_str(&mut o, tags::ACQUISITION_TIME, VR::TM, "101500");
    put_ds(&mut o, tags::SLICE_THICKNESS, &[spec.slice_thickness]);
    put_ds(&mut o, tags::IMAGE_POSITION_PATIENT, &spec.position(k));
    put_ds(&mut o, tags::IMAGE_ORIENTATION_PATIENT, &spec.orientation);
    put_u16(&mut o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(&mut o, tags::ROWS, spec.rows);
    put_u16(&mut o, tags::COLUMNS, spec.columns);
    put_ds(&mut o, tags::PIXEL_SPACING, &spec.pixel_spacing);
    put_u16(&mut o, tags::BITS_ALLOCATED, 16);
    put_u16(&mut o, tags::BITS_STORED, 12);
    put_u16(&mut o, tags::HIGH_BIT, 11);
    put_u16(&mut o, tags::PIXEL_REPRESENTATION, 0);
    put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
    put_str(&mut o, tags::RESCALE_TYPE, VR::LO, "HU");
    let mut px: Vec<u16> = Vec::with_capacity(usize::from(spec.rows) * usize::from(spec.columns));
    push_stored_slice(&mut px, spec, k);
    o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into())));
    o
}

/// The CT series attributes single-frame slices and the Enhanced CT file share.
fn put_ct_series(o: &mut InMemDicomObject, spec: &CtSeriesSpec, series_number: &str, instance: u32) {
    o.put(DataElement::new(tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(spec.image_type.iter().cloned().collect())));
    put_str(o, tags::MODALITY, VR::CS, &spec.modality);
    put_str(o, tags::SERIES_DESCRIPTION, VR::LO, &spec.series_description);
    put_str(o, tags::SERIES_INSTANCE_UID, VR::UI, &spec.series_instance_uid);
    put_str(o, tags::SERIES_NUMBER, VR::IS, series_number);
    put_str(o, tags::INSTANCE_NUMBER, VR::IS, &instance.to_string());
    put_str(o, tags::ACQUISITION_DATE, VR::DA, &spec.study_date);
    if !spec.contrast_bolus_agent.is_empty() {
        put_str(o, tags::CONTRAST_BOLUS_AGENT, VR::LO, &spec.contrast_bolus_agent);
    }
}

/// Append slice `k`'s stored values, row by row.
fn push_stored_slice(px: &mut Vec<u16>, spec: &CtSeriesSpec, k: u32) {
    for y in 0..u32::from(spec.rows) {
        for x in 0..u32::from(spec.columns) {
            px.push(stored((spec.hu)(x, y, k)));
        }
    }
}

/// Decimal String: at most 16 characters.
fn fmt_ds(v: f64) -> String {
    let s = format!("{v}");
    if s.len() <= 16 { s } else { format!("{v:.6}") }
}
