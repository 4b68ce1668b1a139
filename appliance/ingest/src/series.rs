//! CT series selection by written rules (configurable): CT modality, ORIGINAL\PRIMARY, axial,
//! one orientation and size, a contrast agent, slice thickness limit, enough slices; among the
//! series left, a preferred (portal-venous) description wins, then the most slices, then the
//! thinnest, then the lowest UID for determinism. The choice and every rejection are recorded.

use crlm_config::SeriesConfig;
use crlm_models::dicom::DicomHeader;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// SeriesInstanceUID, or a stand-in key when the export left it empty.
    pub series: String,
    pub description: Option<String>,
    pub slices: usize,
    pub slice_thickness_mm: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    #[serde(flatten)]
    pub series: SeriesSummary,
    pub reason: String,
}

/// The choice among a case's CT series, as stored with the case when it closes (`crlm cases`
/// shows it) and used by the prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesChoice {
    pub chosen: Option<SeriesSummary>,
    pub reason: String,
    pub rejected: Vec<Rejection>,
}

/// The key a CT image is grouped under: its SeriesInstanceUID, or (when the export blanked the
/// UIDs) its series number, description, size and folder.
pub fn series_key(h: &DicomHeader, folder: &str) -> String {
    match &h.series_instance_uid {
        Some(uid) => uid.clone(),
        None => format!(
            "no-uid:{folder}:{}:{}:{}x{}",
            h.series_number.map(|n| n.to_string()).unwrap_or_default(),
            h.series_description.as_deref().unwrap_or(""),
            h.rows.unwrap_or(0),
            h.columns.unwrap_or(0)
        ),
    }
}

fn normal(o: &[f64; 6]) -> [f64; 3] {
    [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]]
}

const CONTRAST_WORDS: &[&str] =
    &["contrast", "portal", "venous", "arterial", "c+", "+c", " ce ", "km", "kontrast", "pv", "delayed"];

fn has_contrast(h: &DicomHeader) -> bool {
    if let Some(agent) = &h.contrast_bolus_agent {
        let a = agent.trim().to_ascii_lowercase();
        if !a.is_empty() && !["none", "no", "n", "nil", "0"].contains(&a.as_str()) {
            return true;
        }
    }
    let d = format!(" {} ", h.series_description.as_deref().unwrap_or("").to_ascii_lowercase());
    let d = d.replace(['_', '/', '-'], " ");
    CONTRAST_WORDS.iter().any(|w| d.contains(w))
}

/// Choose the CT series among `images` (each CT image header with its series key).
pub fn choose_series(images: &[(String, DicomHeader)], cfg: &SeriesConfig) -> SeriesChoice {
    let mut groups: BTreeMap<&str, Vec<&DicomHeader>> = BTreeMap::new();
    for (key, h) in images {
        groups.entry(key.as_str()).or_default().push(h);
    }
    let mut rejected = Vec::new();
    let mut candidates: Vec<(SeriesSummary, bool)> = Vec::new();
    for (key, hs) in &groups {
        let first = hs[0];
        let slices = plane_count(hs);
        let summary = SeriesSummary {
            series: (*key).to_string(),
            description: first.series_description.clone(),
            slices,
            slice_thickness_mm: first.slice_thickness,
        };
        match reject_reason(hs, cfg) {
            Some(reason) => rejected.push(Rejection { series: summary, reason }),
            None => {
                let desc = first.series_description.as_deref().unwrap_or("").to_ascii_lowercase();
                let preferred = cfg.preferred_description.iter().any(|p| {
                    let p = p.to_ascii_lowercase();
                    desc.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| w == p)
                        || (p.len() > 3 && desc.contains(&p))
                });
                candidates.push((summary, preferred));
            }
        }
    }
    candidates.sort_by(|(a, ap), (b, bp)| {
        bp.cmp(ap)
            .then(b.slices.cmp(&a.slices))
            .then(
                a.slice_thickness_mm
                    .unwrap_or(f64::MAX)
                    .partial_cmp(&b.slice_thickness_mm.unwrap_or(f64::MAX))
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
            .then(a.series.cmp(&b.series))
    });
    let mut it = candidates.into_iter();
    let Some((chosen, chosen_pref)) = it.next() else {
        let reason = if groups.is_empty() {
            "no CT images in the case".to_string()
        } else {
            format!("none of the {} CT series meets the selection rules", groups.len())
        };
        return SeriesChoice { chosen: None, reason, rejected };
    };
    for (other, pref) in it {
        let reason = if chosen_pref && !pref {
            format!(
                "eligible, but \"{}\" is preferred (portal-venous description)",
                chosen.description.as_deref().unwrap_or("?")
            )
        } else if other.slices < chosen.slices {
            format!("eligible, but the chosen series has more slices ({} vs {})", chosen.slices, other.slices)
        } else {
            "eligible, but the chosen series ranks first (thinner slices or tie broken by UID)".to_string()
        };
        rejected.push(Rejection { series: other, reason });
    }
    let reason = format!(
        "{}{} slices{}",
        if chosen_pref { "preferred description; " } else { "" },
        chosen.slices,
        chosen.slice_thickness_mm.map(|t| format!(", {t} mm")).unwrap_or_default()
    );
    SeriesChoice { chosen: Some(chosen), reason, rejected }
}

fn reject_reason(hs: &[&DicomHeader], cfg: &SeriesConfig) -> Option<String> {
    let first = hs[0];
    if let Some(m) = first.modality.as_deref()
        && m != "CT"
    {
        return Some(format!("modality {m}, not CT"));
    }
    let it = &first.image_type;
    if it.iter().any(|t| t == "LOCALIZER") {
        return Some("localizer (scout) images".into());
    }
    if cfg.require_original_primary && !(it.iter().any(|t| t == "ORIGINAL") && it.iter().any(|t| t == "PRIMARY")) {
        return Some(format!(
            "ImageType {} is not ORIGINAL\\PRIMARY (a reformat or derived series)",
            if it.is_empty() { "(absent)".to_string() } else { it.join("\\") }
        ));
    }
    let Some(o) = first.image_orientation_patient else {
        return Some("no ImageOrientationPatient: geometry unknown".into());
    };
    if hs
        .iter()
        .any(|h| h.image_orientation_patient.is_none_or(|x| x.iter().zip(o.iter()).any(|(a, b)| (a - b).abs() > 1e-3)))
    {
        return Some("mixed orientations within the series".into());
    }
    if hs.iter().any(|h| h.rows != first.rows || h.columns != first.columns) {
        return Some("mixed image sizes within the series".into());
    }
    let n = normal(&o);
    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    let tilt = if len > 0.0 { (n[2].abs() / len).clamp(-1.0, 1.0).acos().to_degrees() } else { 90.0 };
    if tilt > cfg.axial_tolerance_degrees {
        return Some(format!("not axial: slice normal {tilt:.1} degrees from the head-feet axis"));
    }
    if cfg.require_contrast && !hs.iter().any(|h| has_contrast(h)) {
        return Some(
            "no contrast agent recorded (ContrastBolusAgent empty, description names no contrast phase)".into(),
        );
    }
    if let Some(t) = first.slice_thickness
        && t > cfg.max_slice_thickness_mm
    {
        return Some(format!("slice thickness {t} mm is above {} mm", cfg.max_slice_thickness_mm));
    }
    let slices = plane_count(hs);
    if (slices as u64) < u64::from(cfg.min_slices) {
        return Some(format!("{slices} slices, fewer than the {} required", cfg.min_slices));
    }
    None
}

/// Image planes in a series: every frame of a multi-frame (Enhanced CT) image counts, and a
/// SOP instance exported twice counts once.
pub fn plane_count(hs: &[&DicomHeader]) -> usize {
    let frames = |h: &DicomHeader| h.number_of_frames.unwrap_or(1).max(1) as usize;
    let mut seen = std::collections::HashSet::new();
    hs.iter().filter(|h| h.sop_instance_uid.as_deref().is_none_or(|uid| seen.insert(uid))).map(|h| frames(h)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(series: &str, desc: &str, contrast: &str, thick: f64, it: &[&str], sop: usize) -> (String, DicomHeader) {
        (
            series.into(),
            DicomHeader {
                modality: Some("CT".into()),
                series_instance_uid: Some(series.into()),
                sop_instance_uid: Some(format!("{series}.{sop}")),
                series_description: Some(desc.into()),
                contrast_bolus_agent: (!contrast.is_empty()).then(|| contrast.into()),
                slice_thickness: Some(thick),
                image_type: it.iter().map(|s| s.to_string()).collect(),
                image_orientation_patient: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                rows: Some(512),
                columns: Some(512),
                ..Default::default()
            },
        )
    }

    fn series(n: usize, key: &str, desc: &str, contrast: &str, thick: f64, it: &[&str]) -> Vec<(String, DicomHeader)> {
        (0..n).map(|i| img(key, desc, contrast, thick, it, i)).collect()
    }

    #[test]
    fn portal_venous_contrast_series_wins_and_every_other_has_a_reason() {
        let op = &["ORIGINAL", "PRIMARY", "AXIAL"];
        let mut all = series(120, "1.1", "ABD PORTAL VENOUS 2mm", "IOHEXOL", 2.0, op);
        all.extend(series(200, "1.2", "ABD ARTERIAL 1mm", "IOHEXOL", 1.0, op));
        all.extend(series(300, "1.3", "ABD NATIVE", "", 1.0, op));
        all.extend(series(60, "1.4", "ABD PV 5mm COR", "IOHEXOL", 5.0, &["DERIVED", "SECONDARY", "REFORMATTED"]));
        all.extend(series(40, "1.5", "ABD VENOUS 8mm", "IOHEXOL", 8.0, op));
        let c = choose_series(&all, &SeriesConfig::default());
        assert_eq!(c.chosen.as_ref().unwrap().series, "1.1");
        let reason = |s: &str| c.rejected.iter().find(|r| r.series.series == s).unwrap().reason.clone();
        assert!(reason("1.2").contains("preferred"), "{}", reason("1.2"));
        assert!(reason("1.3").contains("no contrast"));
        assert!(reason("1.4").contains("ORIGINAL\\PRIMARY"));
        assert!(reason("1.5").contains("above 5 mm"));
        assert_eq!(c.rejected.len(), 4);
    }

    #[test]
    fn most_slices_wins_without_preference_and_tilted_is_not_axial() {
        let op = &["ORIGINAL", "PRIMARY"];
        let mut all = series(80, "2.1", "ABDOMEN C+", "", 3.0, op);
        all.extend(series(100, "2.2", "ABDOMEN C+ THIN", "OMNIPAQUE", 1.0, op));
        let mut tilted = series(150, "2.3", "ABDOMEN C+", "OMNIPAQUE", 1.0, op);
        for (_, h) in &mut tilted {
            h.image_orientation_patient = Some([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]); // coronal
        }
        all.extend(tilted);
        let c = choose_series(&all, &SeriesConfig::default());
        assert_eq!(c.chosen.as_ref().unwrap().series, "2.2");
        assert!(c.rejected.iter().any(|r| r.series.series == "2.3" && r.reason.contains("not axial")));
        assert!(c.rejected.iter().any(|r| r.series.series == "2.1" && r.reason.contains("more slices (100 vs 80)")));
    }
}
