//! ONNX graphs as data, in pure Rust: the protobuf messages ([`proto`]), a graph builder, and
//! reading a graph's declared inputs and outputs ([`GraphIo`]) so a package's graphs are checked
//! against its input spec without ONNX Runtime. The runtime ([`crate::backend`]) and the offline
//! tools ([`crate::onnx`]: export, quantisation) both build on this; it depends on neither.

pub mod proto;

use prost::Message;
use proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("weights: {0}")]
    Weights(String),
    #[error("{file}: {why}")]
    Graph { file: String, why: String },
    #[error("calibration: {0}")]
    Calibration(String),
}

/// A graph input or output dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named, dynamic dimension (the number of tiles, say).
    Named(String),
}

impl Dim {
    pub fn n(name: &str) -> Dim {
        Dim::Named(name.into())
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Named(n) => write!(f, "{n}"),
        }
    }
}

/// Builds one graph node by node; every intermediate tensor gets a unique name.
pub struct GraphBuilder {
    graph: GraphProto,
    next: usize,
}

pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_type::INT, i: v, ..Default::default() }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_type::INTS, ints: v.to_vec(), ..Default::default() }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => Dimension { dim_value: Some(*v), dim_param: None },
            Dim::Named(n) => Dimension { dim_value: None, dim_param: Some(n.clone()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type, shape: Some(TensorShapeProto { dim }) }),
        }),
        doc_string: String::new(),
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder { graph: GraphProto { name: name.into(), ..Default::default() }, next: 0 }
    }

    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, data_type::FLOAT, dims));
        name.into()
    }

    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(value_info(name, data_type::FLOAT, dims));
    }

    fn init(&mut self, name: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> String {
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type,
            name: name.into(),
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }

    pub fn f32s(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        self.init(name, dims, data_type::FLOAT, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn i64s(&mut self, name: &str, dims: &[usize], v: &[i64]) -> String {
        self.init(name, dims, data_type::INT64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn i32s(&mut self, name: &str, dims: &[usize], v: &[i32]) -> String {
        self.init(name, dims, data_type::INT32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    pub fn i8s(&mut self, name: &str, dims: &[usize], v: &[i8]) -> String {
        self.init(name, dims, data_type::INT8, v.iter().map(|x| x.to_le_bytes()[0]).collect())
    }

    /// A node with one output; returns the output's name (`out` when given, else a fresh one).
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, out: Option<&str>) -> String {
        self.next += 1;
        let output = out.map(str::to_string).unwrap_or_else(|| format!("{}_{}", op.to_lowercase(), self.next));
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: format!("{op}_{}", self.next),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    /// `x W^T + b` (PyTorch's Linear; W is `[out, in]`).
    pub fn linear(&mut self, x: &str, w: &str, b: &str, out: Option<&str>) -> String {
        self.node("Gemm", &[x, w, b], vec![attr_int("transB", 1)], out)
    }

    /// Serialise as an ONNX model (opset 17, IR 8) with the given metadata.
    pub fn finish(self, doc: &str, metadata: &[(&str, &str)]) -> Vec<u8> {
        let model = ModelProto {
            ir_version: proto::IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: proto::OPSET }],
            producer_name: "crlm-edge".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v.to_string() })
                .collect(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// The same model with every initializer's values moved to ONNX external data in one file,
/// `location` (relative to the graph's folder): (the graph, the data file). How exporters store
/// encoders over 2 GB; the tests make such packages with it.
#[cfg(any(test, feature = "write"))]
pub fn externalize(bytes: &[u8], location: &str) -> Result<(Vec<u8>, Vec<u8>), OnnxError> {
    let mut m = ModelProto::decode(bytes)
        .map_err(|e| OnnxError::Graph { file: location.into(), why: format!("not an ONNX model: {e}") })?;
    let mut data = Vec::new();
    for t in m.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
        if t.raw_data.is_empty() {
            continue;
        }
        let entry = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
        t.external_data = vec![
            entry("location", location.into()),
            entry("offset", data.len().to_string()),
            entry("length", t.raw_data.len().to_string()),
        ];
        t.data_location = proto::EXTERNAL;
        data.append(&mut t.raw_data);
    }
    Ok((m.encode_to_vec(), data))
}

/// A graph's declared inputs and outputs: name, element type, shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphIo {
    pub opset: i64,
    pub inputs: Vec<(String, i32, Vec<Dim>)>,
    pub outputs: Vec<(String, i32, Vec<Dim>)>,
    /// Operators by type, counted (what `crlm model info` shows, and the INT8 check).
    pub ops: Vec<(String, usize)>,
    /// Initializers (weights) by ONNX element type, counted (the fp16 check).
    pub initializer_types: Vec<(i32, usize)>,
    /// Files holding initializers as ONNX external data, relative to the graph's folder.
    pub external_data: Vec<String>,
}

fn dims_of(v: &ValueInfoProto) -> (i32, Vec<Dim>) {
    let t = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    let elem = t.map(|t| t.elem_type).unwrap_or(0);
    let dims = t
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match (&d.dim_value, &d.dim_param) {
                    (Some(v), _) => Dim::Fixed(*v),
                    (None, Some(p)) => Dim::Named(p.clone()),
                    (None, None) => Dim::Named("?".into()),
                })
                .collect()
        })
        .unwrap_or_default();
    (elem, dims)
}

impl GraphIo {
    /// Read a graph's interface. Initializers that are also listed as inputs (old exporters do
    /// that) are not inputs a caller feeds, so they are left out.
    pub fn read(file: &str, bytes: &[u8]) -> Result<GraphIo, OnnxError> {
        let m = ModelProto::decode(bytes)
            .map_err(|e| OnnxError::Graph { file: file.into(), why: format!("not an ONNX model: {e}") })?;
        let g = m.graph.ok_or_else(|| OnnxError::Graph { file: file.into(), why: "no graph".into() })?;
        let opset =
            m.opset_import.iter().filter(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).max();
        let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        let io = |v: &[ValueInfoProto], skip_inits: bool| {
            v.iter()
                .filter(|x| !(skip_inits && inits.contains(x.name.as_str())))
                .map(|x| {
                    let (e, d) = dims_of(x);
                    (x.name.clone(), e, d)
                })
                .collect::<Vec<_>>()
        };
        let mut ops: Vec<(String, usize)> = Vec::new();
        for n in &g.node {
            match ops.iter_mut().find(|(o, _)| *o == n.op_type) {
                Some((_, c)) => *c += 1,
                None => ops.push((n.op_type.clone(), 1)),
            }
        }
        ops.sort();
        let mut initializer_types: Vec<(i32, usize)> = Vec::new();
        for t in &g.initializer {
            match initializer_types.iter_mut().find(|(d, _)| *d == t.data_type) {
                Some((_, c)) => *c += 1,
                None => initializer_types.push((t.data_type, 1)),
            }
        }
        initializer_types.sort_unstable();
        let mut external_data: Vec<String> = g
            .initializer
            .iter()
            .filter(|t| t.data_location == proto::EXTERNAL)
            .flat_map(|t| t.external_data.iter().filter(|e| e.key == "location").map(|e| e.value.clone()))
            .collect();
        external_data.sort();
        external_data.dedup();
        Ok(GraphIo {
            opset: opset.unwrap_or(0),
            inputs: io(&g.input, true),
            outputs: io(&g.output, false),
            ops,
            initializer_types,
            external_data,
        })
    }

    /// Initializers of one element type.
    pub fn initializers_of(&self, data_type: i32) -> usize {
        self.initializer_types.iter().find(|(d, _)| *d == data_type).map_or(0, |(_, c)| *c)
    }

    pub fn count(&self, op: &str) -> usize {
        self.ops.iter().find(|(o, _)| o == op).map(|(_, c)| *c).unwrap_or(0)
    }
}
