//! What a case holds of each modality, as ingest last found it: kept with the case row (JSON in
//! `cases.modalities`), shown by `crlm cases` and the panel's ingest view.

use serde::{Deserialize, Serialize};

/// A case's CT, slides and clinical file as ingest found them. A row written before any
/// evaluation (`{}`) reads as all missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaseModalities {
    pub ct: CtHeld,
    pub slide: SlidesHeld,
    pub clinical: ClinicalHeld,
}

/// The case's CT: the series chosen, or why none is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CtHeld {
    Found {
        series_description: Option<String>,
        slices: usize,
        /// Region-of-interest files (a DICOM SEG) beside the series.
        roi_files: usize,
    },
    Missing {
        /// Why no series is usable (series selection's reason).
        #[serde(default)]
        reason: String,
    },
}

impl Default for CtHeld {
    fn default() -> Self {
        CtHeld::Missing { reason: String::new() }
    }
}

/// The case's slides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SlidesHeld {
    Found {
        count: usize,
    },
    #[default]
    Missing,
}

/// The case's clinical record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ClinicalHeld {
    Found {
        /// The record's hash (its values never leave the state database).
        record_hash: String,
    },
    #[default]
    Missing,
}

impl CaseModalities {
    /// Read from the stored JSON; anything unreadable reads as all missing.
    pub fn from_json(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
    }

    /// The stored JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    pub fn has_ct(&self) -> bool {
        matches!(self.ct, CtHeld::Found { .. })
    }

    pub fn has_slide(&self) -> bool {
        matches!(self.slide, SlidesHeld::Found { .. })
    }

    pub fn has_clinical(&self) -> bool {
        matches!(self.clinical, ClinicalHeld::Found { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_is_the_one_crlm_cases_has_always_shown_and_an_empty_row_reads_as_missing() {
        let m = CaseModalities {
            ct: CtHeld::Found { series_description: Some("ART".into()), slices: 40, roi_files: 1 },
            slide: SlidesHeld::Found { count: 2 },
            clinical: ClinicalHeld::Missing,
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ct": {"status": "found", "series_description": "ART", "slices": 40, "roi_files": 1},
                "slide": {"status": "found", "count": 2},
                "clinical": {"status": "missing"},
            })
        );
        assert_eq!(CaseModalities::from_json(&m.to_json()), m);
        let empty = CaseModalities::from_json("{}");
        assert!(!empty.has_ct() && !empty.has_slide() && !empty.has_clinical());
        let missing = serde_json::json!({"ct": {"status": "missing", "reason": "no CT images"}});
        assert_eq!(
            CaseModalities::from_json(&missing.to_string()).ct,
            CtHeld::Missing { reason: "no CT images".into() }
        );
    }
}
