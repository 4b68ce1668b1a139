//! Synthetic cases made with the project's own writers: a CT series, a pyramidal slide and a
//! clinical file. Tests and `crlm demo` use them, so a fresh clone needs no outside data.

use crate::dicom::writer::{phantom_liver, uid_from};
use crate::dicom::{CtSeriesSpec, DicomError, write_ct_series, write_segmentation};
use crate::slide::{SlideError, SlideSpec, write_pyramidal_tiff};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Dicom(#[from] DicomError),
    #[error(transparent)]
    Slide(#[from] SlideError),
    #[error("I/O error writing synthetic case: {0}")]
    Io(#[from] std::io::Error),
}

/// What to put in a sample case folder.
#[derive(Debug, Clone)]
pub struct SampleCase {
    pub patient_id: String,
    pub age: u32,
    pub slices: u32,
    pub with_ct: bool,
    pub with_slide: bool,
    pub with_clinical: bool,
    /// Also write a non-contrast series, which series selection must reject.
    pub with_noncontrast_series: bool,
    /// Also write a DICOM SEG of the phantom's liver on the contrast series' grid.
    pub with_segmentation: bool,
    pub slide_size: (u32, u32),
    pub resection: &'static str,
    /// Identifying values written into the DICOM headers and the slide's label and description
    /// (privacy tests plant canaries here).
    pub patient_name: String,
    pub patient_birth_date: String,
    pub accession_number: String,
    pub institution_name: String,
    pub slide_label: String,
    pub slide_file_name: String,
}

impl SampleCase {
    pub fn new(patient_id: &str) -> Self {
        SampleCase {
            patient_id: patient_id.into(),
            age: 63,
            slices: 12,
            with_ct: true,
            with_slide: true,
            with_clinical: true,
            with_noncontrast_series: false,
            with_segmentation: false,
            slide_size: (1024, 768),
            resection: "R0",
            patient_name: "DOE^JANE".into(),
            patient_birth_date: "19600101".into(),
            accession_number: "ACC0001".into(),
            institution_name: "EXAMPLE HOSPITAL".into(),
            slide_label: format!("{patient_id} H&E"),
            slide_file_name: "slide_HE_1.svs".into(),
        }
    }

    pub fn study_uid(&self) -> String {
        uid_from(&format!("{}/study", self.patient_id))
    }

    pub fn series_uid(&self, which: &str) -> String {
        uid_from(&format!("{}/series/{which}", self.patient_id))
    }
}

/// The schema-v1 clinical JSON for a sample case.
pub fn clinical_json(case: &SampleCase) -> String {
    serde_json::json!({
        "schema_version": 1,
        "patient_id": case.patient_id,
        "case_id": format!("CASE-{}", case.patient_id),
        "age": case.age,
        "sex": "F",
        "surgery_date": "2026-03-20",
        "ct_date": "2026-03-01",
        "site": "left_colon",
        "pT": "T3",
        "pN": "N1b",
        "M": "M0",
        "resection": case.resection,
        "cea_ng_ml": 7.4,
        "ca19_9_u_ml": "unknown",
        "grade": "G2",
        "lymphovascular_invasion": true,
        "perineural_invasion": false,
        "tumour_deposits": false,
        "tumour_budding": "Bd2",
        "nodes_examined": 18,
        "nodes_positive": 2,
        "mmr": "pMMR",
        "kras": "mutant",
        "nras": "wild_type",
        "braf": "wild_type",
        "adjuvant_chemotherapy": true
    })
    .to_string()
}

/// Write a sample case into `dir` (created). Returns every file written.
pub fn write_sample_case(dir: &Path, case: &SampleCase) -> Result<Vec<PathBuf>, SynthError> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let study = case.study_uid();
    if case.with_ct {
        let mut spec = CtSeriesSpec::axial(&case.patient_id, &study, &case.series_uid("pv"), case.slices);
        spec.patient_name = case.patient_name.clone();
        spec.patient_birth_date = case.patient_birth_date.clone();
        spec.accession_number = case.accession_number.clone();
        spec.institution_name = case.institution_name.clone();
        files.extend(write_ct_series(&dir.join("ct_portal_venous"), &spec)?);
        if case.with_segmentation {
            let p = dir.join("segmentation").join("liver_seg.dcm");
            std::fs::create_dir_all(dir.join("segmentation"))?;
            write_segmentation(&p, &spec, "Liver", &|x, y, z| phantom_liver(x, y, z))?;
            files.push(p);
        }
        if case.with_noncontrast_series {
            let mut nc = spec.clone();
            nc.series_instance_uid = case.series_uid("nc");
            nc.slices = case.slices + 4;
            nc.series_description = "ABDOMEN NATIVE 5.0".into();
            nc.contrast_bolus_agent = String::new();
            nc.slice_thickness = 5.0;
            nc.slice_spacing = 5.0;
            files.extend(write_ct_series(&dir.join("ct_native"), &nc)?);
        }
    }
    if case.with_slide {
        let mut spec = SlideSpec::small(case.slide_size.0, case.slide_size.1);
        spec.label_text = Some(case.slide_label.clone());
        let p = dir.join(&case.slide_file_name);
        write_pyramidal_tiff(&p, &spec)?;
        files.push(p);
    }
    if case.with_clinical {
        let p = dir.join("clinical.json");
        std::fs::write(&p, clinical_json(case))?;
        files.push(p);
    }
    Ok(files)
}
