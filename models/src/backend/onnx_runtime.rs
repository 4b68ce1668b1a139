//! The onnx backend: the package's ONNX parts in ONNX Runtime (`ort`, loaded at run time),
//! wired as `backend::wiring` checked them: format 2's `[parts]`, or format 1's five graphs.
//!
//! Providers are tried in the configured order, each registered with `error_on_failure` (ort
//! would otherwise fall back to the CPU silently): the first that registers runs every graph
//! and is reported; a failure moves to the next only when `allow_fallback` is set. TensorRT
//! builds engines on first use and caches them in `engine_cache` (they are tied to the GPU and
//! the TensorRT version); CUDA is registered behind it for nodes TensorRT does not take.

use super::wiring::{PartWiring, Wiring, wire_package};
use super::{Backend, BackendInfo, OnnxOptions, Provider, RawInput};
use crate::error::ModelError;
use crate::net::NetOutput;
use crate::package::spec::OnnxPrecision;
use crate::package::{FileData, ModelPackage};
use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

fn backend_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Backend(e.to_string())
}

/// Where libonnxruntime is: the configured path, `ORT_DYLIB_PATH`, the usual library folders,
/// then a Python `onnxruntime` install (its wheel carries the library).
pub fn find_library(configured: &Path) -> Result<PathBuf, String> {
    if !configured.as_os_str().is_empty() {
        return if configured.is_file() {
            Ok(configured.to_path_buf())
        } else {
            Err(format!("onnx.library {} does not exist", configured.display()))
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("ORT_DYLIB_PATH {} does not exist", p.display())) };
    }
    for dir in [
        "/usr/lib",
        "/usr/local/lib",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/opt/onnxruntime/lib",
    ] {
        let p = Path::new(dir).join("libonnxruntime.so");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(p) = python_onnxruntime() {
        return Ok(p);
    }
    Err("libonnxruntime.so not found: set onnx.library or ORT_DYLIB_PATH, or `pip install onnxruntime`".into())
}

/// The library inside a Python onnxruntime wheel (`onnxruntime/capi/libonnxruntime.so.1.x.y`).
fn python_onnxruntime() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

/// The library's version from its real file name (`libonnxruntime.so.1.32.0`; links resolved),
/// else the build's commit from ONNX Runtime's build info.
fn runtime_version(lib: &Path) -> String {
    let real = std::fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf());
    let name = real.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if let Some(v) = name.strip_prefix("libonnxruntime.so.").filter(|v| v.contains('.')) {
        return v.to_string();
    }
    ort::info()
        .split(", ")
        .find_map(|s| s.strip_prefix("git-commit-id="))
        .map(|c| format!("commit {c}"))
        .unwrap_or_else(|| "unknown".into())
}

/// One ONNX Runtime per process (ort allows one environment): the library it came from and its
/// version, or why it could not be loaded.
static RUNTIME: OnceLock<Result<(Environment, PathBuf, String), String>> = OnceLock::new();

fn runtime(opts: &OnnxOptions) -> Result<&'static (Environment, PathBuf, String), ModelError> {
    RUNTIME
        .get_or_init(|| {
            let lib = find_library(&opts.library)?;
            let env = ort::init_from(&lib)
                .map_err(|e| format!("{}: {e}", lib.display()))?
                .with_name("crlm")
                .build()
                .map_err(|e| e.to_string())?;
            let version = runtime_version(&lib);
            Ok((env, lib, version))
        })
        .as_ref()
        .map_err(|e| ModelError::Backend(format!("ONNX Runtime could not be loaded: {e}")))
}

/// Where a session's graph comes from.
enum Graph<'a> {
    /// The verified bytes in memory (small graphs with their weights inside).
    Memory(&'a [u8]),
    /// A folder package's file, hashed again just before: large graphs, and graphs whose weights
    /// are ONNX external data (ONNX Runtime reads those files beside the graph itself).
    File(PathBuf),
}

fn session(
    env: &Environment,
    graph: &Graph,
    opts: &OnnxOptions,
    provider: Provider,
    int8: bool,
) -> Result<Session, String> {
    let mut b = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?;
    if opts.threads > 0 {
        b = b.with_intra_threads(opts.threads).map_err(|e| e.to_string())?;
    }
    let eps = match provider {
        Provider::Tensorrt => {
            let mut trt = ep::TensorRT::default()
                .with_device_id(opts.device_id)
                .with_fp16(opts.trt_fp16)
                .with_int8(int8)
                .with_max_workspace_size(opts.trt_workspace_mib << 20)
                .with_timing_cache(true);
            if !opts.engine_cache.as_os_str().is_empty() {
                trt = trt.with_engine_cache(true).with_engine_cache_path(opts.engine_cache.display());
            }
            vec![trt.build().error_on_failure(), ep::CUDA::default().with_device_id(opts.device_id).build()]
        }
        Provider::Cuda => vec![ep::CUDA::default().with_device_id(opts.device_id).build().error_on_failure()],
        Provider::Cpu => vec![ep::CPU::default().build().error_on_failure()],
    };
    b = b.with_execution_providers(eps).map_err(|e| e.to_string())?;
    match graph {
        Graph::Memory(bytes) => b.commit_from_memory(bytes).map_err(|e| e.to_string()),
        Graph::File(path) => b.commit_from_file(path).map_err(|e| e.to_string()),
    }
}

/// A part's graph as a session will read it: from memory, or from the package folder after the
/// graph and its external data are hashed again (gigabytes ONNX Runtime reads itself).
fn graph_of<'a>(package: &'a ModelPackage, w: &PartWiring) -> Result<Graph<'a>, ModelError> {
    let on_disk = matches!(package.files.get(&w.file), Some(FileData::Disk { .. }));
    if w.external_data.is_empty()
        && !on_disk
        && let Some(bytes) = package.file(&w.file)
    {
        return Ok(Graph::Memory(bytes));
    }
    for f in &w.external_data {
        package.verified_path(f)?;
    }
    package.verified_path(&w.file)?.map(Graph::File).ok_or_else(|| {
        ModelError::Backend(format!(
            "{}: a graph with ONNX external data runs from a package folder (not a .tar or the built-in demo)",
            w.file
        ))
    })
}

/// A part's session and its checked interface.
struct Part {
    session: Mutex<Session>,
    wiring: PartWiring,
}

pub struct OnnxBackend {
    tile_encoder: Option<Part>,
    slide_aggregator: Option<Part>,
    ct_encoder: Option<Part>,
    clinical_encoder: Option<Part>,
    fusion: Part,
    wiring: Wiring,
    info: BackendInfo,
    tile_batch: usize,
}

impl OnnxBackend {
    pub fn new(package: &ModelPackage, opts: &OnnxOptions) -> Result<Self, ModelError> {
        let spec = &package.spec;
        let parts = spec.graph_parts().ok_or_else(|| {
            ModelError::Backend("the package has no ONNX graphs ([parts], or [onnx]: `crlm model export-onnx`)".into())
        })?;
        let wiring = wire_package(package)
            .unwrap_or_else(|| Err("the package has no ONNX graphs".into()))
            .map_err(ModelError::Backend)?;
        let (env, _, version) = runtime(opts)?;
        // The engine cache lives in the state folder: made when that exists (on the box), so
        // `crlm predict` in some other folder leaves nothing behind.
        let cache = &opts.engine_cache;
        let wanted = opts.providers.contains(&Provider::Tensorrt) && cache.parent().is_some_and(|p| p.is_dir());
        if wanted
            && !cache.exists()
            && let Err(e) = std::fs::create_dir_all(cache)
        {
            tracing::warn!(path = %cache.display(), error = %e, "cannot create the TensorRT engine cache");
        }
        // The provider is chosen on the first part (the tile encoder when there is one): if a
        // provider cannot take it, it cannot serve the model.
        let order = wiring.parts();
        let first = order.first().ok_or_else(|| ModelError::Backend("the package has no parts".into()))?;
        let first_graph = graph_of(package, first)?;
        let mut chosen = None;
        let mut failures = Vec::new();
        for p in &opts.providers {
            match session(env, &first_graph, opts, *p, first.precision == OnnxPrecision::Int8) {
                Ok(s) => {
                    chosen = Some((*p, s));
                    break;
                }
                Err(why) if opts.allow_fallback => {
                    tracing::warn!(provider = p.name(), %why, "ONNX Runtime provider not available, trying the next");
                    failures.push(format!("{}: {why}", p.name()));
                }
                Err(why) => {
                    return Err(ModelError::Backend(format!(
                        "ONNX Runtime provider {} failed to register (onnx.allow_fallback is off): {why}",
                        p.name()
                    )));
                }
            }
        }
        let (provider, first_session) = chosen.ok_or_else(|| {
            ModelError::Backend(format!("no ONNX Runtime provider could be registered: {}", failures.join("; ")))
        })?;
        let mut first_session = Some(first_session);
        let mut open = |w: &Option<PartWiring>| -> Result<Option<Part>, ModelError> {
            let Some(w) = w else { return Ok(None) };
            let s = match first_session.take() {
                Some(s) if w.part == first.part => s,
                other => {
                    first_session = other;
                    session(env, &graph_of(package, w)?, opts, provider, w.precision == OnnxPrecision::Int8)
                        .map_err(|e| ModelError::Backend(format!("{}: {e}", w.file)))?
                }
            };
            Ok(Some(Part { session: Mutex::new(s), wiring: w.clone() }))
        };
        let tile_encoder = open(&wiring.tile_encoder)?;
        let slide_aggregator = open(&wiring.slide_aggregator)?;
        let ct_encoder = open(&wiring.ct_encoder)?;
        let clinical_encoder = open(&wiring.clinical_encoder)?;
        let fusion = open(&Some(wiring.fusion.clone()))?
            .ok_or_else(|| ModelError::Backend("internal: the fusion part did not open".into()))?;
        let precisions = parts.precisions();
        let mut distinct: Vec<&str> = precisions.values().map(String::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let info = BackendInfo {
            name: "onnx".into(),
            provider: provider.name().into(),
            // Format 1 says what `crlm model quantize` made (`int8`: the encoders); format 2
            // lists the precisions its parts have (`parts` has each).
            precision: match (&spec.parts, &spec.onnx) {
                (None, Some(onnx)) => onnx.precision.name().to_string(),
                _ => distinct.join("+"),
            },
            runtime: Some(version.clone()),
            parts: precisions,
        };
        tracing::info!(provider = provider.name(), precision = %info.precision, onnxruntime = %version, format = spec.format, "onnx backend ready");
        Ok(OnnxBackend {
            tile_encoder,
            slide_aggregator,
            ct_encoder,
            clinical_encoder,
            fusion,
            wiring,
            info,
            tile_batch: opts.tile_batch.max(1),
        })
    }
}

impl Part {
    /// Run with `(role, values, logical shape)` per input; every output by role.
    fn run(&self, inputs: &[(&str, &[f32], Vec<usize>)]) -> Result<BTreeMap<String, Vec<f32>>, ModelError> {
        let mut session = self.session.lock().map_err(|_| backend_err("an ONNX Runtime session lock was poisoned"))?;
        let mut values = Vec::with_capacity(inputs.len());
        for (role, data, logical) in inputs {
            let Some(t) = self.wiring.input(role) else { continue };
            let v = TensorRef::from_array_view((t.feed_shape(logical), *data)).map_err(backend_err)?;
            values.push((std::borrow::Cow::from(t.name.clone()), ort::session::SessionInputValue::from(v)));
        }
        let out = session.run(values).map_err(|e| ModelError::Inference(format!("ONNX Runtime: {e}")))?;
        self.wiring
            .outputs
            .iter()
            .map(|t| {
                let v = out.get(&t.name).ok_or_else(|| {
                    ModelError::Inference(format!("{}: the graph gave no output {:?}", self.wiring.file, t.name))
                })?;
                let (_, data) =
                    v.try_extract_tensor::<f32>().map_err(|e| ModelError::Inference(format!("{}: {e}", t.name)))?;
                Ok((t.role.clone(), data.to_vec()))
            })
            .collect()
    }
}

/// Take one role's output, which must have exactly `len` values (a third-party graph may not).
fn take(out: &mut BTreeMap<String, Vec<f32>>, role: &str, len: usize, what: &str) -> Result<Vec<f32>, ModelError> {
    let v = out.remove(role).unwrap_or_default();
    if v.len() == len {
        Ok(v)
    } else {
        Err(ModelError::Inference(format!("{what}: {} values from the graph, expected {len}", v.len())))
    }
}

/// An optional attention output of `len` values (any of `[len]`, `[1, len]`, `[len, 1]`).
fn attention(
    out: &mut BTreeMap<String, Vec<f32>>,
    role: &str,
    len: usize,
    what: &str,
) -> Result<Option<Vec<f32>>, ModelError> {
    if out.contains_key(role) { take(out, role, len, what).map(Some) } else { Ok(None) }
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Backend for OnnxBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn forward(&self, input: &RawInput) -> Result<NetOutput, ModelError> {
        let w = &self.wiring;
        let mut mask = [0f32; 3];
        // CT: its encoder's embedding, or the volume itself when the fusion reads it.
        let mut slice_attention = None;
        let (ct, ct_shape) = match (input.ct, &self.ct_encoder) {
            (Some(v), Some(p)) => {
                mask[0] = 1.0;
                let [z, y, x] = w.ct_shape;
                let mut out = p.run(&[("ct", v, vec![z, y, x])])?;
                slice_attention = attention(&mut out, "attention", z, "slice attention")?;
                (take(&mut out, "embedding", numel(&w.fusion_ct), "CT embedding")?, w.fusion_ct.clone())
            }
            (Some(v), None) => {
                mask[0] = 1.0;
                (v.to_vec(), w.fusion_ct.clone())
            }
            (None, _) => (vec![0.0; numel(&w.fusion_ct)], w.fusion_ct.clone()),
        };
        // Slide: the aggregator's embedding, or the tile embeddings when the fusion pools.
        let mut tile_attention = None;
        let (slide, slide_shape) = match (input.tile_embeddings, &self.slide_aggregator) {
            (Some((h, n)), agg) => {
                mask[1] = 1.0;
                if h.len() != n * w.tile_width {
                    return Err(ModelError::Input(format!(
                        "{} tile embedding values for {n} tiles of width {}",
                        h.len(),
                        w.tile_width
                    )));
                }
                match agg {
                    Some(p) => {
                        let mut out = p.run(&[("embeddings", h, vec![n, w.tile_width])])?;
                        tile_attention = attention(&mut out, "attention", n, "tile attention")?;
                        (
                            take(&mut out, "embedding", numel(&w.fusion_slide), "slide embedding")?,
                            w.fusion_slide.clone(),
                        )
                    }
                    None => (h.to_vec(), vec![n, w.tile_width]),
                }
            }
            (None, Some(_)) => (vec![0.0; numel(&w.fusion_slide)], w.fusion_slide.clone()),
            (None, None) => (vec![0.0; w.tile_width], vec![1, w.tile_width]),
        };
        let (clinical, clinical_shape) = match (input.clinical, &self.clinical_encoder) {
            (Some(c), Some(p)) => {
                mask[2] = 1.0;
                let mut out = p.run(&[("clinical", c, vec![1, w.clinical_width])])?;
                (
                    take(&mut out, "embedding", numel(&w.fusion_clinical), "clinical embedding")?,
                    w.fusion_clinical.clone(),
                )
            }
            (Some(c), None) => {
                mask[2] = 1.0;
                (c.to_vec(), w.fusion_clinical.clone())
            }
            (None, _) => (vec![0.0; numel(&w.fusion_clinical)], w.fusion_clinical.clone()),
        };
        let n_tiles = input.tile_embeddings.map(|(_, n)| n);
        let mut out = self.fusion.run(&[
            ("ct", &ct, ct_shape),
            ("slide", &slide, slide_shape),
            ("clinical", &clinical, clinical_shape),
            ("mask", &mask, vec![1, 3]),
        ])?;
        let hazards = take(&mut out, "output", w.outputs, "the fusion's output")?;
        if let Some(n) = n_tiles
            && tile_attention.is_none()
        {
            tile_attention = attention(&mut out, "tile_attention", n, "tile attention")?;
        }
        if input.ct.is_some() && slice_attention.is_none() {
            slice_attention = attention(&mut out, "slice_attention", w.ct_shape[0], "slice attention")?;
        }
        Ok(NetOutput { hazards, slice_attention, tile_attention })
    }

    fn tile_batch(&self) -> usize {
        self.tile_batch
    }

    fn embed_tiles(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let p =
            self.tile_encoder.as_ref().ok_or_else(|| ModelError::Input("the package has no tile encoder".into()))?;
        let t = self.wiring.tile_px;
        let per = 3 * t * t;
        if tiles.len() != n * per {
            return Err(ModelError::Input(format!("{} tile values for {n} tiles of {t} px", tiles.len())));
        }
        let e = self.wiring.tile_width;
        let mut out = Vec::with_capacity(n * e);
        for chunk in tiles.chunks(self.tile_batch * per) {
            let m = chunk.len() / per;
            let mut h = p.run(&[("tiles", chunk, vec![m, 3, t, t])])?;
            out.extend(take(&mut h, "embeddings", m * e, "tile embeddings")?);
        }
        Ok(out)
    }
}
