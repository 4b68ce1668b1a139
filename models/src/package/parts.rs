//! Format 2: the model as named ONNX parts (docs/MODEL.md, "Format 2"). Each part is one graph
//! file; `inputs` and `outputs` map the part's roles to the graph's tensor names. Widths are not
//! declared here but read from the graphs, and every connection is checked when the model is
//! built (`backend::wiring`), so any widths and any architecture fit as long as the data flow
//! is one of these:
//!
//! | part | inputs (role) | outputs (role) |
//! |---|---|---|
//! | `tile_encoder` | `tiles` `[n, 3, T, T]` normalised | `embeddings` `[n, E_tile]` |
//! | `slide_aggregator` | `embeddings` `[n, E_tile]` (or `[1, n, E_tile]`) | `embedding` `[1, E_slide]`, optional `attention` (n values) |
//! | `ct_encoder` | `ct` `[Z, Y, X]` (or `[1, Z, Y, X]`, `[1, 1, Z, Y, X]`) | `embedding` `[1, E_ct]`, optional `attention` (Z values) |
//! | `clinical_encoder` | `clinical` `[1, C]` | `embedding` `[1, E_clin]` |
//! | `fusion` | any of `ct`, `slide`, `clinical`, `mask` `[1, 3]` | `output`: hazards or risk (`[time]`), optional `tile_attention`, `slice_attention` |
//!
//! A part may be absent and the fusion graph do its job: without a `ct_encoder`, the fusion's
//! `ct` input is the CT volume; without a `slide_aggregator`, its `slide` input is the tile
//! embeddings `[n, E_tile]`; without a `clinical_encoder`, its `clinical` input is the clinical
//! vector. A modality that is missing reaches the fusion as zeros with its `mask` entry 0.
//!
//! A format 1 package's `[onnx]` table (CRLM-Net's five graphs) is the same thing with fixed
//! roles: [`PartsSpec::from_v1`].

use super::spec::{OnnxPrecision, OnnxSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The parts of a format 2 package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_encoder: Option<PartSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide_aggregator: Option<PartSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct_encoder: Option<PartSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinical_encoder: Option<PartSpec>,
    pub fusion: PartSpec,
}

/// One ONNX graph and what its tensors are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    /// `.onnx` file inside the package.
    pub file: String,
    /// `fp32`, `fp16` (fp16 weights inside, fp32 at the interface) or `int8` (QDQ): checked
    /// against the graph.
    #[serde(default)]
    pub precision: OnnxPrecision,
    /// Role -> the graph's input tensor name.
    pub inputs: BTreeMap<String, String>,
    /// Role -> the graph's output tensor name.
    pub outputs: BTreeMap<String, String>,
    /// Output role -> its width, for a graph that leaves the width symbolic (some exporters
    /// do); checked against the graph when it is fixed there, and against every run's output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub widths: BTreeMap<String, usize>,
}

impl PartSpec {
    pub fn input(&self, role: &str) -> Option<&str> {
        self.inputs.get(role).map(String::as_str)
    }
    pub fn output(&self, role: &str) -> Option<&str> {
        self.outputs.get(role).map(String::as_str)
    }
}

/// The part names, in data-path order.
pub const PART_NAMES: [&str; 5] = ["tile_encoder", "slide_aggregator", "ct_encoder", "clinical_encoder", "fusion"];

/// Roles each part may have: (required inputs, optional inputs, required outputs, optional outputs).
fn roles(
    part: &str,
) -> (&'static [&'static str], &'static [&'static str], &'static [&'static str], &'static [&'static str]) {
    match part {
        "tile_encoder" => (&["tiles"], &[], &["embeddings"], &[]),
        "slide_aggregator" => (&["embeddings"], &[], &["embedding"], &["attention"]),
        "ct_encoder" => (&["ct"], &[], &["embedding"], &["attention"]),
        "clinical_encoder" => (&["clinical"], &[], &["embedding"], &[]),
        _ => (&[], &["ct", "slide", "clinical", "mask"], &["output"], &["tile_attention", "slice_attention"]),
    }
}

impl PartsSpec {
    /// Every part that is there, with its name.
    pub fn present(&self) -> Vec<(&'static str, &PartSpec)> {
        let all = [&self.tile_encoder, &self.slide_aggregator, &self.ct_encoder, &self.clinical_encoder];
        let mut v: Vec<(&'static str, &PartSpec)> =
            PART_NAMES.iter().zip(all).filter_map(|(n, p)| p.as_ref().map(|p| (*n, p))).collect();
        v.push(("fusion", &self.fusion));
        v
    }

    /// What is wrong with the declaration itself (roles unknown or missing), before any graph is
    /// read; empty when nothing is.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, p) in self.present() {
            let (req_in, opt_in, req_out, opt_out) = roles(name);
            for (have, req, opt, what) in
                [(&p.inputs, req_in, opt_in, "inputs"), (&p.outputs, req_out, opt_out, "outputs")]
            {
                for r in req {
                    if !have.contains_key(*r) {
                        out.push(format!("parts.{name}.{what} needs the role {r:?}"));
                    }
                }
                for k in have.keys() {
                    if !req.contains(&k.as_str()) && !opt.contains(&k.as_str()) {
                        let known: Vec<&str> = req.iter().chain(opt.iter()).copied().collect();
                        out.push(format!("parts.{name}.{what}: unknown role {k:?} (roles: {known:?})"));
                    }
                }
            }
            for (role, w) in &p.widths {
                if !["embeddings", "embedding"].contains(&role.as_str()) || !p.outputs.contains_key(role) {
                    out.push(format!("parts.{name}.widths: {role:?} is not an embedding output of the part"));
                } else if *w == 0 {
                    out.push(format!("parts.{name}.widths.{role} must be positive"));
                }
            }
        }
        if self.fusion.inputs.keys().all(|k| k == "mask") {
            out.push("parts.fusion reads none of ct, slide, clinical".into());
        }
        if self.slide_aggregator.is_some() && self.tile_encoder.is_none() {
            out.push("parts.slide_aggregator without a parts.tile_encoder to feed it".into());
        }
        out
    }

    /// CRLM-Net's five graphs of a format 1 `[onnx]` table as parts: the encoders INT8 in an
    /// int8 package, the rest fp32 (what `crlm model quantize` makes).
    pub fn from_v1(onnx: &OnnxSpec) -> PartsSpec {
        let map = |roles: &[&str], names: &[String]| -> BTreeMap<String, String> {
            roles.iter().zip(names).map(|(r, n)| (r.to_string(), n.clone())).collect()
        };
        let encoder_precision = onnx.precision;
        let part = |g: &super::spec::OnnxGraphSpec, ins: &[&str], outs: &[&str], precision| PartSpec {
            file: g.file.clone(),
            precision,
            inputs: map(ins, &g.inputs),
            outputs: map(outs, &g.outputs),
            widths: BTreeMap::new(),
        };
        PartsSpec {
            tile_encoder: Some(part(&onnx.tile_encoder, &["tiles"], &["embeddings"], encoder_precision)),
            slide_aggregator: Some(part(
                &onnx.slide_pool,
                &["embeddings"],
                &["embedding", "attention"],
                OnnxPrecision::Fp32,
            )),
            ct_encoder: Some(part(&onnx.ct_encoder, &["ct"], &["embedding", "attention"], encoder_precision)),
            clinical_encoder: Some(part(&onnx.clinical_encoder, &["clinical"], &["embedding"], OnnxPrecision::Fp32)),
            fusion: part(&onnx.fusion, &["ct", "slide", "clinical", "mask"], &["output"], OnnxPrecision::Fp32),
        }
    }

    /// `tile_encoder=int8, fusion=fp32, ...` (the ledger and `crlm model info`).
    pub fn precisions(&self) -> BTreeMap<String, String> {
        self.present().into_iter().map(|(n, p)| (n.to_string(), p.precision.name().to_string())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(ins: &[(&str, &str)], outs: &[(&str, &str)]) -> PartSpec {
        let m = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        PartSpec {
            file: "x.onnx".into(),
            precision: OnnxPrecision::Fp32,
            inputs: m(ins),
            outputs: m(outs),
            widths: BTreeMap::new(),
        }
    }

    #[test]
    fn roles_are_checked_by_part() {
        let ok = PartsSpec {
            tile_encoder: Some(part(&[("tiles", "input")], &[("embeddings", "features")])),
            slide_aggregator: None,
            ct_encoder: None,
            clinical_encoder: None,
            fusion: part(&[("slide", "h"), ("clinical", "c"), ("mask", "m")], &[("output", "risk")]),
        };
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let mut bad = ok.clone();
        bad.tile_encoder = Some(part(&[("pixels", "input")], &[("embeddings", "f")]));
        bad.fusion = part(&[("mask", "m")], &[("hazards", "h")]);
        let p = bad.problems();
        assert!(p.iter().any(|m| m.contains("needs the role \"tiles\"")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("unknown role \"pixels\"")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("reads none of")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needs the role \"output\"")), "{p:?}");
    }
}
