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
pub fn phantom_hu(x: u32, y: u32, _z: u32) -> i16 {
    let (cx, cy) = (f64::from(x) - 32.0, f64::from(y) - 32.0);
    let r2 = cx * cx + cy * cy;
    if r2 > 28.0 * 28.0 {
        -1000
    } else if (cx + 8.0).powi(2) + (cy + 6.0).powi(2) < 100.0 {
        110
    } else {
        40
    }
}

/// A size-independent texture (benchmarks): body-like values that vary with every coordinate.
pub fn texture_hu(x: u32, y: u32, z: u32) -> i16 {
    ((x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ z.wrapping_mul(7)) % 1400) as i16 - 900
}

/// Deterministic DICOM UID under the 2.25 (UUID-derived) root.
pub fn uid_from(seed: &str) -> String {
    let h = crate::sha256_hex(seed.as_bytes());
    let v = u128::from_str_radix(&h[..32], 16).unwrap_or(1) >> 2;
    format!("2.25.{v}")
}

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

fn slice_object(spec: &CtSeriesSpec, k: u32, instance: u32, sop_uid: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let s = |o: &mut InMemDicomObject, tag, vr, v: &str| {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    s(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    o.put(DataElement::new(tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(spec.image_type.iter().cloned().collect())));
    s(&mut o, tags::SOP_CLASS_UID, VR::UI, sop_class::CT_IMAGE);
    s(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    s(&mut o, tags::STUDY_DATE, VR::DA, &spec.study_date);
    s(&mut o, tags::ACQUISITION_DATE, VR::DA, &spec.study_date);
    s(&mut o, tags::ACQUISITION_TIME, VR::TM, "101500");
    s(&mut o, tags::ACCESSION_NUMBER, VR::SH, &spec.accession_number);
    s(&mut o, tags::STUDY_TIME, VR::TM, "101000");
    s(&mut o, tags::STUDY_ID, VR::SH, "1");
    s(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, &spec.referring_physician_name);
    s(&mut o, tags::STUDY_DESCRIPTION, VR::LO, &spec.study_description);
    s(&mut o, tags::PATIENT_SEX, VR::CS, "F");
    s(&mut o, tags::MODALITY, VR::CS, &spec.modality);
    s(&mut o, tags::MANUFACTURER, VR::LO, "CRLM-EDGE SYNTHETIC");
    s(&mut o, tags::INSTITUTION_NAME, VR::LO, &spec.institution_name);
    s(&mut o, tags::SERIES_DESCRIPTION, VR::LO, &spec.series_description);
    s(&mut o, tags::PATIENT_NAME, VR::PN, &spec.patient_name);
    s(&mut o, tags::PATIENT_ID, VR::LO, &spec.patient_id);
    s(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, &spec.patient_birth_date);
    if !spec.contrast_bolus_agent.is_empty() {
        s(&mut o, tags::CONTRAST_BOLUS_AGENT, VR::LO, &spec.contrast_bolus_agent);
    }
    s(&mut o, tags::SLICE_THICKNESS, VR::DS, &fmt_ds(spec.slice_thickness));
    s(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, &spec.study_instance_uid);
    s(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &spec.series_instance_uid);
    s(&mut o, tags::SERIES_NUMBER, VR::IS, "2");
    s(&mut o, tags::INSTANCE_NUMBER, VR::IS, &instance.to_string());
    let p = spec.position(k);
    o.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(p.iter().map(|v| fmt_ds(*v)).collect()),
    ));
    o.put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        PrimitiveValue::Strs(spec.orientation.iter().map(|v| fmt_ds(*v)).collect()),
    ));
    s(&mut o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &uid_from(&format!("{}/for", spec.study_instance_uid)));
    o.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, dicom_value!(U16, [1])));
    s(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    o.put(DataElement::new(tags::ROWS, VR::US, dicom_value!(U16, [spec.rows])));
    o.put(DataElement::new(tags::COLUMNS, VR::US, dicom_value!(U16, [spec.columns])));
    o.put(DataElement::new(
        tags::PIXEL_SPACING,
        VR::DS,
        PrimitiveValue::Strs(spec.pixel_spacing.iter().map(|v| fmt_ds(*v)).collect()),
    ));
    o.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, dicom_value!(U16, [16])));
    o.put(DataElement::new(tags::BITS_STORED, VR::US, dicom_value!(U16, [12])));
    o.put(DataElement::new(tags::HIGH_BIT, VR::US, dicom_value!(U16, [11])));
    o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, dicom_value!(U16, [0])));
    s(&mut o, tags::RESCALE_INTERCEPT, VR::DS, "-1024");
    s(&mut o, tags::RESCALE_SLOPE, VR::DS, "1");
    s(&mut o, tags::RESCALE_TYPE, VR::LO, "HU");
    let mut px: Vec<u16> = Vec::with_capacity(usize::from(spec.rows) * usize::from(spec.columns));
    for y in 0..u32::from(spec.rows) {
        for x in 0..u32::from(spec.columns) {
            let hu = i32::from((spec.hu)(x, y, k));
            px.push((hu + 1024).clamp(0, 4095) as u16);
        }
    }
    o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into())));
    o
}

/// Decimal String: at most 16 characters.
fn fmt_ds(v: f64) -> String {
    let s = format!("{v}");
    if s.len() <= 16 { s } else { format!("{v:.6}") }
}
