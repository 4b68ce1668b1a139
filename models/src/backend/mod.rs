//! Where CRLM-Net runs (docs/BACKENDS.md): `candle` (pure Rust, always built, the package's
//! safetensors weights) or `onnx` (ONNX Runtime through `ort`, cargo feature `onnx`, the
//! package's ONNX graphs, with TensorRT, CUDA or CPU execution providers). Both take the same
//! prepared inputs and give the same [`NetOutput`]; `inference::Model` adds the package's
//! modality policy, calibration and threshold on top.

pub mod candle;
#[cfg(feature = "onnx")]
pub mod onnx_runtime;
pub mod wiring;

use crate::error::ModelError;
use crate::net::NetOutput;
use crate::package::ModelPackage;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One case's prepared tensors, row-major fp32. Tiles arrive encoded: the tile encoder runs
/// batch by batch while the slide is read (`inference::encode_tiles`), never on a whole slide.
pub struct RawInput<'a> {
    /// CT on the package grid, `[Z, Y, X]`.
    pub ct: Option<&'a [f32]>,
    /// Tile embeddings `[N, E]` (from [`Backend::embed_tiles`]) and N.
    pub tile_embeddings: Option<(&'a [f32], usize)>,
    /// Encoded clinical vector `[C]`.
    pub clinical: Option<&'a [f32]>,
}

/// What ran a prediction: reported in `crlm model info`, every prediction and the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `candle` or `onnx`.
    pub name: String,
    /// The execution provider that was registered (`cpu` for candle).
    pub provider: String,
    /// `fp32` or `int8`.
    pub precision: String,
    /// ONNX Runtime's version, for the onnx backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Each ONNX part and its precision (onnx backend).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parts: std::collections::BTreeMap<String, String>,
}

pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;
    /// The network on one case's inputs and tile embeddings: its outputs and attention maps.
    fn forward(&self, input: &RawInput) -> Result<NetOutput, ModelError>;
    /// The tile encoder on normalised tiles `[N, 3, T, T]`: embeddings `[N, E]` flattened.
    fn embed_tiles(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>, ModelError>;
    /// Tiles per tile-encoder run when the package does not say.
    fn tile_batch(&self) -> usize {
        256
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Candle,
    Onnx,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "candle" => Ok(BackendKind::Candle),
            "onnx" => Ok(BackendKind::Onnx),
            other => Err(format!("unknown backend {other:?} (candle or onnx)")),
        }
    }
}

/// ONNX Runtime execution providers, tried in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// How the onnx backend is set up (`[onnx]` in crlm.toml; docs/CONFIG.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxOptions {
    /// libonnxruntime.so; empty: `ORT_DYLIB_PATH`, then the usual library folders, then a
    /// Python `onnxruntime` install.
    pub library: PathBuf,
    /// Tried in order; the first that registers runs the graphs (CPU takes what it cannot).
    pub providers: Vec<Provider>,
    /// When a provider fails to register: try the next (true) or refuse to start (false).
    pub allow_fallback: bool,
    /// Intra-op threads; 0: ONNX Runtime's default (every core).
    pub threads: usize,
    pub device_id: i32,
    /// TensorRT: build FP16 engines (INT8 comes from the graph's Q/DQ nodes).
    pub trt_fp16: bool,
    pub trt_workspace_mib: usize,
    /// TensorRT engine cache; empty: `<state dir>/trt-engines` (set by the service).
    pub engine_cache: PathBuf,
    /// Tiles per tile-encoder run (bounded memory on a GPU).
    pub tile_batch: usize,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions {
            library: PathBuf::new(),
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            allow_fallback: true,
            threads: 0,
            device_id: 0,
            trt_fp16: true,
            trt_workspace_mib: 1024,
            engine_cache: PathBuf::new(),
            tile_batch: 256,
        }
    }
}

/// Build the chosen backend for a verified package.
pub fn build(package: &ModelPackage, kind: BackendKind, onnx: &OnnxOptions) -> Result<Box<dyn Backend>, ModelError> {
    match kind {
        BackendKind::Candle => Ok(Box::new(candle::CandleBackend::new(package)?)),
        BackendKind::Onnx => build_onnx(package, onnx),
    }
}

#[cfg(feature = "onnx")]
fn build_onnx(package: &ModelPackage, onnx: &OnnxOptions) -> Result<Box<dyn Backend>, ModelError> {
    Ok(Box::new(onnx_runtime::OnnxBackend::new(package, onnx)?))
}

#[cfg(not(feature = "onnx"))]
fn build_onnx(_: &ModelPackage, _: &OnnxOptions) -> Result<Box<dyn Backend>, ModelError> {
    Err(ModelError::Backend("this build has no ONNX Runtime backend (build with the `onnx` cargo feature)".into()))
}
