//! A DICOM Comprehensive SR for the site's PACS: same StudyInstanceUID as the CT, a new series,
//! the model in the Contributing Equipment Sequence (manufacturer, model name, software versions,
//! device UID) as IHE AI Results recommends, VerificationFlag UNVERIFIED, and the research-use
//! caution as the first content item. With `outputs.sr_identifiers` off, the patient is the
//! pseudonym and the study UID a keyed stand-in, so the SR can leave the site.

use super::{OutputError, SiteStudy};
use crlm_ledger::{CaseRecord, Outputs, Record};
use crlm_models::dicom::uid_from;
use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Codes this project defines (private coding scheme, "99" prefix per PS3.16 8.2).
const SCHEME: &str = "99CRLMEDGE";

fn put(o: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
}

fn seq(o: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    o.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut c = InMemDicomObject::new_empty();
    put(&mut c, tags::CODE_VALUE, VR::SH, value);
    put(&mut c, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put(&mut c, tags::CODE_MEANING, VR::LO, meaning);
    c
}

fn item(value_type: &str, concept: InMemDicomObject) -> InMemDicomObject {
    let mut i = InMemDicomObject::new_empty();
    put(&mut i, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
    put(&mut i, tags::VALUE_TYPE, VR::CS, value_type);
    seq(&mut i, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept]);
    i
}

fn text_item(concept: InMemDicomObject, text: &str) -> InMemDicomObject {
    let mut i = item("TEXT", concept);
    put(&mut i, tags::TEXT_VALUE, VR::UT, text);
    i
}

fn num_item(concept: InMemDicomObject, value: f64) -> InMemDicomObject {
    let mut i = item("NUM", concept);
    let mut mv = InMemDicomObject::new_empty();
    seq(&mut mv, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code("1", "UCUM", "no units")]);
    put(&mut mv, tags::NUMERIC_VALUE, VR::DS, &format!("{value:.6}"));
    seq(&mut i, tags::MEASURED_VALUE_SEQUENCE, vec![mv]);
    i
}

fn code_item(concept: InMemDicomObject, value: InMemDicomObject) -> InMemDicomObject {
    let mut i = item("CODE", concept);
    seq(&mut i, tags::CONCEPT_CODE_SEQUENCE, vec![value]);
    i
}

/// The SR's bytes (DICOM Part 10, explicit VR little endian).
pub fn write_sr(
    record: &Record,
    c: &CaseRecord,
    out: &Outputs,
    record_hash: &str,
    site: Option<&SiteStudy>,
    identifiers: bool,
) -> Result<Vec<u8>, OutputError> {
    let m = &c.model;
    let pseudonym = c.case.as_str();
    let demo = m.demo;
    let model_name = m.name.as_str();
    let model_version = m.version.as_str();
    let model_sha = m.sha256.as_str();
    let software = c.software.version.as_str();
    let locked = chrono::DateTime::parse_from_rfc3339(&record.core.wall_time).map(|t| t.with_timezone(&chrono::Utc));
    let (date, time) = match &locked {
        Ok(t) => (t.format("%Y%m%d").to_string(), t.format("%H%M%S").to_string()),
        Err(_) => (String::new(), String::new()),
    };
    let sop_uid = uid_from(&format!("crlm-sr|{record_hash}"));
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, COMPREHENSIVE_SR);
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    put(&mut o, tags::MODALITY, VR::CS, "SR");
    put(&mut o, tags::MANUFACTURER, VR::LO, "crlm-edge");
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "CRLM 2-year risk (research use only)");
    let ident = site.filter(|_| identifiers);
    match ident {
        Some(s) => {
            let id = &s.identity;
            put(&mut o, tags::PATIENT_NAME, VR::PN, id.patient_name.as_deref().unwrap_or(""));
            put(&mut o, tags::PATIENT_ID, VR::LO, s.patient_id.as_deref().unwrap_or(""));
            put(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, id.patient_birth_date.as_deref().unwrap_or(""));
            put(&mut o, tags::PATIENT_SEX, VR::CS, id.patient_sex.as_deref().unwrap_or(""));
            put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, &s.study_instance_uid);
            put(&mut o, tags::STUDY_DATE, VR::DA, s.study_date.as_deref().unwrap_or(""));
            put(&mut o, tags::STUDY_TIME, VR::TM, id.study_time.as_deref().unwrap_or(""));
            put(&mut o, tags::ACCESSION_NUMBER, VR::SH, id.accession_number.as_deref().unwrap_or(""));
            put(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, id.referring_physician_name.as_deref().unwrap_or(""));
            put(&mut o, tags::STUDY_ID, VR::SH, id.study_id.as_deref().unwrap_or(""));
        }
        None => {
            // De-identified: the pseudonym as patient, a stand-in study UID derived from the keyed
            // series reference (stable per case), no dates of the patient.
            put(&mut o, tags::PATIENT_NAME, VR::PN, pseudonym);
            put(&mut o, tags::PATIENT_ID, VR::LO, pseudonym);
            put(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, "");
            put(&mut o, tags::PATIENT_SEX, VR::CS, "");
            let anchor =
                c.inputs.as_ref().and_then(|i| i.ct.as_ref()).map(|ct| ct.series.as_str()).unwrap_or(record_hash);
            put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, &uid_from(&format!("crlm-study|{anchor}")));
            put(&mut o, tags::STUDY_DATE, VR::DA, "");
            put(&mut o, tags::STUDY_TIME, VR::TM, "");
            put(&mut o, tags::ACCESSION_NUMBER, VR::SH, "");
            put(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
            put(&mut o, tags::STUDY_ID, VR::SH, "");
            put(&mut o, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        }
    }
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &uid_from(&format!("crlm-sr-series|{record_hash}")));
    put(&mut o, tags::SERIES_NUMBER, VR::IS, "9901");
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
    seq(&mut o, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, Vec::new());
    put(&mut o, tags::CONTENT_DATE, VR::DA, &date);
    put(&mut o, tags::CONTENT_TIME, VR::TM, &time);
    put(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, Vec::new());
    if let Some(s) = ident.filter(|s| !s.instances.is_empty()) {
        let refs = s
            .instances
            .iter()
            .map(|(class, inst)| {
                let mut r = InMemDicomObject::new_empty();
                put(&mut r, tags::REFERENCED_SOP_CLASS_UID, VR::UI, class);
                put(&mut r, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, inst);
                r
            })
            .collect();
        let mut series = InMemDicomObject::new_empty();
        put(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, &s.series_instance_uid);
        seq(&mut series, tags::REFERENCED_SOP_SEQUENCE, refs);
        let mut study = InMemDicomObject::new_empty();
        put(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, &s.study_instance_uid);
        seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
        seq(&mut o, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![study]);
    }
    // The model as contributing equipment (IHE AIR).
    let mut eq = InMemDicomObject::new_empty();
    put(&mut eq, tags::MANUFACTURER, VR::LO, "crlm-edge");
    put(&mut eq, tags::MANUFACTURER_MODEL_NAME, VR::LO, model_name);
    eq.put(DataElement::new(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs([format!("crlm-edge {software}"), format!("{model_name} {model_version}")].into()),
    ));
    put(&mut eq, tags::DEVICE_UID, VR::UI, &uid_from(&format!("crlm-model|{model_sha}")));
    put(&mut eq, tags::CONTRIBUTION_DESCRIPTION, VR::ST, &format!("model package sha256 {model_sha}"));
    if let Ok(t) = &locked {
        put(&mut eq, tags::CONTRIBUTION_DATE_TIME, VR::DT, &t.format("%Y%m%d%H%M%S+0000").to_string());
    }
    seq(&mut eq, tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, vec![code("109102", "DCM", "Processing Equipment")]);
    seq(&mut o, tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, vec![eq]);

    // Content tree: caution first, then the result, the model and the lock.
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    seq(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("18748-4", "LN", "Diagnostic imaging report")]);
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut caution = super::RESEARCH_CAUTION.to_string();
    if demo {
        caution = format!("{} {caution}", crlm_predict::DEMO_NOTICE);
    }
    let (risk, threshold, group) = (out.risk_2y, out.threshold, out.risk_group.name());
    let content = vec![
        text_item(code("121106", "DCM", "Comment"), &caution),
        num_item(code("RISK2Y", SCHEME, "Predicted 2-year liver metastasis risk"), risk),
        code_item(
            code("RISKGROUP", SCHEME, "Risk group at the locked threshold"),
            if group == "high" { code("HIGH", SCHEME, "High risk") } else { code("LOW", SCHEME, "Low risk") },
        ),
        num_item(code("THRESHOLD", SCHEME, "Locked risk-group threshold"), threshold),
        text_item(
            code("MODEL", SCHEME, "Model"),
            &format!("{model_name} {model_version}, package sha256 {model_sha}{}", if demo { " (DEMO)" } else { "" }),
        ),
        text_item(
            code("LEDGER", SCHEME, "Prediction ledger record"),
            &format!("record {} sha256 {record_hash}, locked {}", record.core.seq, record.core.wall_time),
        ),
    ];
    seq(&mut o, tags::CONTENT_SEQUENCE, content);

    // UTF-8 only when a name needs it: plain ASCII stays in the default repertoire, which every
    // PACS reads.
    let ascii = site.filter(|_| identifiers).is_none_or(|s| {
        [&s.identity.patient_name, &s.identity.referring_physician_name]
            .iter()
            .all(|v| v.as_deref().unwrap_or("").is_ascii())
    });
    if !ascii {
        put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(COMPREHENSIVE_SR)
        .media_storage_sop_instance_uid(sop_uid.as_str())
        .transfer_syntax(EXPLICIT_VR_LE)
        .implementation_class_uid(uid_from("crlm-edge implementation"))
        .implementation_version_name("CRLM_EDGE_01")
        .build()
        .map_err(|e| OutputError::Dicom(e.to_string()))?;
    let file = o.with_exact_meta(meta);
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| OutputError::Dicom(e.to_string()))?;
    Ok(bytes)
}
