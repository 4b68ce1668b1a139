//! How a package's ONNX parts connect, checked against the graphs themselves before anything
//! runs: every role's tensor exists and is float32, every width one part gives is the width the
//! next part reads, the tile count stays dynamic, fixed dimensions match the package (CT grid,
//! tile side, clinical width, the time axis), and each part's declared precision is what its
//! graph holds. Pure Rust: no ONNX Runtime needed, so `crlm model verify` could run it anywhere.
//!
//! A role's data has a logical shape (`[n, E]` for tile embeddings); a graph may declare extra
//! leading dimensions of 1 (`[1, n, E]`, `[1, 1, Z, Y, X]`), which [`Tensor::feed_shape`] adds.

use crate::graph::proto::data_type;
use crate::graph::{Dim, GraphIo};
use crate::package::parts::{PartSpec, PartsSpec};
use crate::package::spec::OnnxPrecision;
use crate::package::{ModelPackage, ModelSpec};

/// One role's tensor in a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub role: String,
    pub name: String,
    /// As the graph declares it.
    pub dims: Vec<Dim>,
}

impl Tensor {
    /// The shape to feed for data of `logical` shape: the graph's extra leading 1s, then it.
    pub fn feed_shape(&self, logical: &[usize]) -> Vec<usize> {
        let extra = self.dims.len().saturating_sub(logical.len());
        std::iter::repeat_n(1, extra).chain(logical.iter().copied()).collect()
    }
}

/// One part, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PartWiring {
    pub part: &'static str,
    pub file: String,
    /// Package files holding the graph's weights as ONNX external data (the session is then
    /// created from the folder, not from memory).
    pub external_data: Vec<String>,
    pub precision: OnnxPrecision,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
    /// Declared widths of embedding outputs (`parts.<part>.widths`).
    pub widths: std::collections::BTreeMap<String, usize>,
}

impl PartWiring {
    pub fn input(&self, role: &str) -> Option<&Tensor> {
        self.inputs.iter().find(|t| t.role == role)
    }
    pub fn output(&self, role: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|t| t.role == role)
    }
}

/// The whole model, checked: the parts and the widths between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Wiring {
    pub tile_encoder: Option<PartWiring>,
    pub slide_aggregator: Option<PartWiring>,
    pub ct_encoder: Option<PartWiring>,
    pub clinical_encoder: Option<PartWiring>,
    pub fusion: PartWiring,
    /// Tile embedding width (the tile encoder's).
    pub tile_width: usize,
    /// What the fusion's `ct`, `slide` and `clinical` inputs take per case (logical shapes; the
    /// tile count is 0 in `slide` when the fusion reads tile embeddings directly).
    pub fusion_ct: Vec<usize>,
    pub fusion_slide: Vec<usize>,
    pub fusion_clinical: Vec<usize>,
    /// `[Z, Y, X]` of the CT grid.
    pub ct_shape: [usize; 3],
    pub tile_px: usize,
    pub clinical_width: usize,
    /// Values in the fusion's `output`.
    pub outputs: usize,
}

fn show(d: &[Dim]) -> String {
    format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

/// Does `have` (the graph) accept data of shape `want`? `None` in `want` is a count only known
/// per case (tiles), which the graph must leave dynamic. Extra leading dimensions must be 1.
fn fits(have: &[Dim], want: &[Option<usize>]) -> bool {
    if have.len() < want.len() {
        return false;
    }
    let extra = have.len() - want.len();
    let (lead, rest) = have.split_at(extra);
    lead.iter().all(|d| matches!(d, Dim::Fixed(1) | Dim::Named(_)))
        && rest.iter().zip(want).all(|(h, w)| match (h, w) {
            (Dim::Fixed(a), Some(b)) => usize::try_from(*a).is_ok_and(|a| a == *b),
            (Dim::Fixed(_), None) => false,
            (Dim::Named(_), _) => true,
        })
}

fn want_text(w: &[Option<usize>]) -> String {
    format!(
        "[{}]",
        w.iter().map(|d| d.map_or_else(|| "n".to_string(), |v| v.to_string())).collect::<Vec<_>>().join(", ")
    )
}

/// The width of an embedding output (its last dimension), which the next part reads: fixed in
/// the graph, or declared in `parts.<part>.widths` (and equal to the graph's when both are).
fn width(p: &PartWiring, role: &str) -> Result<usize, String> {
    let t = p.output(role).ok_or_else(|| format!("parts.{} has no {role} output", p.part))?;
    let declared = p.widths.get(role).copied();
    match (t.dims.last(), declared) {
        (Some(Dim::Fixed(v)), Some(d)) if usize::try_from(*v).ok() != Some(d) => Err(format!(
            "{}: parts.{} output {:?} is {} but parts.{}.widths.{role} is {d}",
            p.file,
            p.part,
            t.name,
            show(&t.dims),
            p.part
        )),
        (Some(Dim::Fixed(v)), _) if *v > 0 => Ok(*v as usize),
        (_, Some(d)) => Ok(d),
        _ => Err(format!(
            "{}: parts.{} output {:?} is {}: its width (last dimension) is not fixed in the graph; declare it \
             as parts.{}.widths.{role}",
            p.file,
            p.part,
            t.name,
            show(&t.dims),
            p.part
        )),
    }
}

/// Resolve one part's roles against its graph: names, float32, precision.
fn part(name: &'static str, spec: &PartSpec, io: &GraphIo) -> Result<PartWiring, String> {
    let f = &spec.file;
    let find = |declared: &[(String, i32, Vec<Dim>)], role: &str, tensor: &str, what: &str| {
        let (_, elem, dims) = declared.iter().find(|(n, _, _)| n == tensor).ok_or_else(|| {
            format!(
                "{f}: parts.{name} names {what} {tensor:?} ({role}), the graph has {:?}",
                declared.iter().map(|d| d.0.as_str()).collect::<Vec<_>>()
            )
        })?;
        if *elem != data_type::FLOAT {
            return Err(format!(
                "{f}: {what} {tensor:?} is not float32 (cast inside the graph; the interface is fp32)"
            ));
        }
        Ok(Tensor { role: role.into(), name: tensor.into(), dims: dims.clone() })
    };
    let inputs = spec.inputs.iter().map(|(r, t)| find(&io.inputs, r, t, "input")).collect::<Result<_, _>>()?;
    let outputs = spec.outputs.iter().map(|(r, t)| find(&io.outputs, r, t, "output")).collect::<Result<_, _>>()?;
    let qdq = io.count("QuantizeLinear") + io.count("DequantizeLinear");
    let fp16 = io.initializers_of(data_type::FLOAT16);
    let found = if qdq > 0 {
        OnnxPrecision::Int8
    } else if fp16 > 0 {
        OnnxPrecision::Fp16
    } else {
        OnnxPrecision::Fp32
    };
    if found != spec.precision {
        return Err(format!(
            "{f}: parts.{name} is declared {} but the graph is {} ({qdq} Q/DQ nodes, {fp16} fp16 initializers)",
            spec.precision.name(),
            found.name()
        ));
    }
    // External data must be package files: relative, inside the package, listed and verified.
    let dir = f.rfind('/').map_or("", |i| f.get(..=i).unwrap_or_default());
    let mut external_data = Vec::new();
    for loc in &io.external_data {
        if loc.is_empty() || loc.starts_with('/') || loc.split(['/', '\\']).any(|c| c == "..") {
            return Err(format!("{f}: external data {loc:?} is outside the package"));
        }
        external_data.push(format!("{dir}{loc}"));
    }
    Ok(PartWiring {
        part: name,
        file: f.clone(),
        external_data,
        precision: spec.precision,
        inputs,
        outputs,
        widths: spec.widths.clone(),
    })
}

fn check(p: &PartWiring, dir_in: bool, role: &str, want: &[Option<usize>]) -> Result<(), String> {
    let t = if dir_in { p.input(role) } else { p.output(role) };
    let Some(t) = t else { return Ok(()) };
    if fits(&t.dims, want) {
        Ok(())
    } else {
        Err(format!(
            "{}: parts.{} {} {:?} ({role}) is {}, the package's spec needs {}",
            p.file,
            p.part,
            if dir_in { "input" } else { "output" },
            t.name,
            show(&t.dims),
            want_text(want)
        ))
    }
}

/// Check every part against its graph (`graph(part)` gives the part's interface) and the
/// package's shapes; the wiring, or the first thing that does not fit.
pub fn wire(
    spec: &ModelSpec,
    parts: &PartsSpec,
    mut graph: impl FnMut(&PartSpec) -> Result<GraphIo, String>,
) -> Result<Wiring, String> {
    let mut load = |name: &'static str, p: &Option<PartSpec>| -> Result<Option<PartWiring>, String> {
        p.as_ref().map(|p| graph(p).and_then(|io| part(name, p, &io))).transpose()
    };
    let tile_encoder = load("tile_encoder", &parts.tile_encoder)?;
    let slide_aggregator = load("slide_aggregator", &parts.slide_aggregator)?;
    let ct_encoder = load("ct_encoder", &parts.ct_encoder)?;
    let clinical_encoder = load("clinical_encoder", &parts.clinical_encoder)?;
    let fusion = graph(&parts.fusion).and_then(|io| part("fusion", &parts.fusion, &io))?;

    let [x, y, z] = spec.ct.shape;
    let t = spec.slide.tile_px as usize;
    let c = spec.clinical.width();
    let k = spec.time_axis().outputs();
    let s = Some;

    let mut tile_width = 0;
    if let Some(p) = &tile_encoder {
        check(p, true, "tiles", &[None, s(3), s(t), s(t)])?;
        tile_width = width(p, "embeddings")?;
        check(p, false, "embeddings", &[None, s(tile_width)])?;
    }
    let fusion_slide = match &slide_aggregator {
        Some(p) => {
            check(p, true, "embeddings", &[None, s(tile_width)])?;
            let w = width(p, "embedding")?;
            check(p, false, "embedding", &[s(1), s(w)])?;
            vec![1, w]
        }
        None => vec![0, tile_width],
    };
    let fusion_ct = match &ct_encoder {
        Some(p) => {
            check(p, true, "ct", &[s(z), s(y), s(x)])?;
            let w = width(p, "embedding")?;
            check(p, false, "embedding", &[s(1), s(w)])?;
            vec![1, w]
        }
        None => vec![z, y, x],
    };
    let fusion_clinical = match &clinical_encoder {
        Some(p) => {
            check(p, true, "clinical", &[s(1), s(c)])?;
            let w = width(p, "embedding")?;
            check(p, false, "embedding", &[s(1), s(w)])?;
            vec![1, w]
        }
        None => vec![1, c],
    };
    let as_want = |v: &[usize]| -> Vec<Option<usize>> {
        v.iter().enumerate().map(|(i, d)| if i == 0 && *d == 0 { None } else { Some(*d) }).collect()
    };
    check(&fusion, true, "ct", &as_want(&fusion_ct))?;
    check(&fusion, true, "slide", &as_want(&fusion_slide))?;
    check(&fusion, true, "clinical", &as_want(&fusion_clinical))?;
    check(&fusion, true, "mask", &[s(1), s(3)])?;
    check(&fusion, false, "output", &[s(1), s(k)])?;
    Ok(Wiring {
        tile_encoder,
        slide_aggregator,
        ct_encoder,
        clinical_encoder,
        fusion,
        tile_width,
        fusion_ct,
        fusion_slide,
        fusion_clinical,
        ct_shape: [z, y, x],
        tile_px: t,
        clinical_width: c,
        outputs: k,
    })
}

/// The package's graphs wired, when it has any (`crlm model verify` and the onnx backend).
pub fn wire_package(package: &ModelPackage) -> Option<Result<Wiring, String>> {
    let parts = package.spec.graph_parts()?;
    let wired = wire(&package.spec, &parts, |p| {
        let bytes = package.read(&p.file).map_err(|e| e.to_string())?;
        GraphIo::read(&p.file, &bytes).map_err(|e| e.to_string())
    });
    Some(wired.and_then(|w| {
        for p in w.parts() {
            if let Some(missing) = p.external_data.iter().find(|d| !package.files.contains_key(*d)) {
                return Err(format!("{}: its external data {missing} is not in the package", p.file));
            }
        }
        Ok(w)
    }))
}

impl Wiring {
    /// Every part, in data-path order.
    pub fn parts(&self) -> Vec<&PartWiring> {
        [&self.tile_encoder, &self.slide_aggregator, &self.ct_encoder, &self.clinical_encoder]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&self.fusion))
            .collect()
    }

    /// One line per part: what it reads and gives, and its precision.
    pub fn describe(&self) -> Vec<String> {
        let d = |v: &[usize]| {
            let v: Vec<String> = v.iter().map(|x| if *x == 0 { "n".into() } else { x.to_string() }).collect();
            format!("[{}]", v.join(", "))
        };
        let mut out = Vec::new();
        let t = self.tile_px;
        if let Some(p) = &self.tile_encoder {
            out.push(format!(
                "tile_encoder ({}): tiles [n, 3, {t}, {t}] -> [n, {}]",
                p.precision.name(),
                self.tile_width
            ));
        }
        if let Some(p) = &self.slide_aggregator {
            out.push(format!(
                "slide_aggregator ({}): [n, {}] -> {}{}",
                p.precision.name(),
                self.tile_width,
                d(&self.fusion_slide),
                if p.output("attention").is_some() { " + attention" } else { "" }
            ));
        }
        if let Some(p) = &self.ct_encoder {
            out.push(format!("ct_encoder ({}): CT {:?} -> {}", p.precision.name(), self.ct_shape, d(&self.fusion_ct)));
        }
        if let Some(p) = &self.clinical_encoder {
            out.push(format!(
                "clinical_encoder ({}): [1, {}] -> {}",
                p.precision.name(),
                self.clinical_width,
                d(&self.fusion_clinical)
            ));
        }
        let reads: Vec<&str> = self.fusion.inputs.iter().map(|t| t.role.as_str()).collect();
        out.push(format!(
            "fusion ({}): {} -> {} outputs",
            self.fusion.precision.name(),
            reads.join(", "),
            self.outputs
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_ones_and_dynamic_counts() {
        let n = || Dim::n("n");
        assert!(fits(&[n(), Dim::Fixed(1024)], &[None, Some(1024)]));
        assert!(fits(&[Dim::Fixed(1), n(), Dim::Fixed(1024)], &[None, Some(1024)]));
        assert!(!fits(&[Dim::Fixed(2), n(), Dim::Fixed(1024)], &[None, Some(1024)]));
        assert!(!fits(&[Dim::Fixed(16), Dim::Fixed(1024)], &[None, Some(1024)]), "a fixed tile count");
        assert!(!fits(&[n(), Dim::Fixed(1024)], &[None, Some(64)]));
        assert!(!fits(&[Dim::Fixed(1024)], &[None, Some(1024)]));
        let t = Tensor { role: "ct".into(), name: "x".into(), dims: vec![Dim::Fixed(1); 5] };
        assert_eq!(t.feed_shape(&[16, 64, 64]), [1, 1, 16, 64, 64]);
    }
}
