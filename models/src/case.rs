//! The typed facts about one case that travel from preparation (`crlm predict`, the service's
//! worker) to the ledger record and everything read from it: eligibility, what became of each
//! modality, and which model ran. Serialised field by field as the `crlm predict --json`
//! document and the ledger record (format 1) have always held them.

use crate::inference::{ModalityInput, Model};
use serde::{Deserialize, Serialize};

/// The study protocol check. `checked: false` alone when eligibility is switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Eligibility {
    pub checked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
}

impl Eligibility {
    /// Checked (or not) with these reasons against.
    pub fn checked(enabled: bool, reasons: Vec<String>) -> Eligibility {
        Eligibility { checked: enabled, eligible: Some(reasons.is_empty()), reasons: Some(reasons) }
    }

    /// Not eligible: the reasons, joined.
    pub fn refusal(&self) -> Option<String> {
        (self.eligible == Some(false)).then(|| self.reasons.clone().unwrap_or_default().join("; "))
    }
}

/// What became of one modality of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum ModalityStatus {
    Used,
    /// Not in the case.
    Missing,
    /// In the case but unusable.
    Refused {
        reason: String,
    },
}

impl ModalityStatus {
    pub fn of<T>(input: &ModalityInput<T>) -> ModalityStatus {
        match input {
            ModalityInput::Used(_) => ModalityStatus::Used,
            ModalityInput::Missing => ModalityStatus::Missing,
            ModalityInput::Refused(r) => ModalityStatus::Refused { reason: r.clone() },
        }
    }

    pub fn is_used(&self) -> bool {
        matches!(self, ModalityStatus::Used)
    }
}

/// The three modalities of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modalities {
    pub ct: ModalityStatus,
    pub slide: ModalityStatus,
    pub clinical: ModalityStatus,
}

impl Modalities {
    /// `ct+slide+clinical`, the used ones in that order.
    pub fn used(&self) -> String {
        [("ct", &self.ct), ("slide", &self.slide), ("clinical", &self.clinical)]
            .into_iter()
            .filter(|(_, s)| s.is_used())
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Each status with `f` applied to its reason (scrubbing file names out of it).
    pub fn map_reasons(&self, f: impl Fn(&str) -> String) -> Modalities {
        let m = |s: &ModalityStatus| match s {
            ModalityStatus::Refused { reason } => ModalityStatus::Refused { reason: f(reason) },
            other => other.clone(),
        };
        Modalities { ct: m(&self.ct), slide: m(&self.slide), clinical: m(&self.clinical) }
    }
}

/// Which model ran: the package and what ran it (every prediction document and ledger record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub demo: bool,
    pub signer_key_id: String,
    /// `candle` or `onnx`.
    pub backend: String,
    /// The execution provider (`cpu` for candle).
    pub device: String,
    pub precision: String,
    /// ONNX Runtime's version, for the onnx backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<String>,
    /// The package's `model.toml` format (1: CRLM-Net v1, 2: ONNX parts); absent in records
    /// made before format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
    /// Each ONNX part that ran and its precision (onnx backend).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parts: std::collections::BTreeMap<String, String>,
}

impl ModelIdentity {
    pub fn of(model: &Model) -> ModelIdentity {
        let p = &model.package;
        let b = model.backend_info();
        ModelIdentity {
            name: p.spec.name.clone(),
            version: p.spec.version.clone(),
            sha256: p.sha256.clone(),
            demo: p.spec.demo,
            signer_key_id: p.signer_key_id.clone(),
            backend: b.name,
            device: b.provider,
            precision: b.precision,
            onnxruntime: b.runtime,
            format: Some(p.spec.format),
            parts: b.parts,
        }
    }
}
