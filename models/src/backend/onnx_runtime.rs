//! The onnx backend: the package's five ONNX graphs in ONNX Runtime (`ort`, loaded at run time).
//!
//! Providers are tried in the configured order, each registered with `error_on_failure` (ort
//! would otherwise fall back to the CPU silently): the first that registers runs every graph
//! and is reported; a failure moves to the next only when `allow_fallback` is set. TensorRT
//! builds engines on first use and caches them in `engine_cache` (they are tied to the GPU and
//! the TensorRT version); CUDA is registered behind it for nodes TensorRT does not take.

use super::{Backend, BackendInfo, OnnxOptions, Provider, RawInput};
use crate::error::ModelError;
use crate::graph::{Dim, GraphIo};
use crate::net::NetOutput;
use crate::package::ModelPackage;
use crate::package::spec::{OnnxGraphSpec, OnnxPrecision};
use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
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

/// Shapes of a graph's inputs or outputs.
type Shapes = Vec<Vec<Dim>>;

/// A graph's session and the names of its tensors, in the package's order.
struct Part {
    session: Mutex<Session>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

pub struct OnnxBackend {
    ct: Part,
    tiles: Part,
    pool: Part,
    clinical: Part,
    fusion: Part,
    info: BackendInfo,
    ct_shape: [usize; 3],
    tile_px: usize,
    clinical_width: usize,
    embed: usize,
    tile_batch: usize,
}

fn session(
    env: &Environment,
    bytes: &[u8],
    opts: &OnnxOptions,
    provider: Provider,
    int8: bool,
) -> Result<Session, String> {
    let mut b = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
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
    b.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// Check a graph's declared interface against the package's input spec before running it.
fn check_io(
    part: &str,
    g: &OnnxGraphSpec,
    io: &GraphIo,
    want_in: &[Vec<Dim>],
    want_out: &[Vec<Dim>],
) -> Result<(), ModelError> {
    let fits = |have: &[Dim], want: &[Dim]| {
        have.len() == want.len()
            && have.iter().zip(want).all(|(h, w)| match (h, w) {
                (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
                // A dynamic dimension in the graph accepts what we feed; a named one we need
                // dynamic (the tile count) must not be fixed in the graph.
                (Dim::Named(_), _) => true,
                (Dim::Fixed(_), Dim::Named(_)) => false,
            })
    };
    let show = |d: &[Dim]| format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
    for (names, declared, want, what) in
        [(&g.inputs, &io.inputs, want_in, "input"), (&g.outputs, &io.outputs, want_out, "output")]
    {
        for (name, w) in names.iter().zip(want) {
            let (_, elem, dims) = declared.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
                ModelError::Backend(format!(
                    "{}: onnx.{part} names {what} {name:?}, the graph has {:?}",
                    g.file,
                    declared.iter().map(|d| d.0.as_str()).collect::<Vec<_>>()
                ))
            })?;
            if *elem != crate::graph::proto::data_type::FLOAT {
                return Err(ModelError::Backend(format!("{}: {what} {name:?} is not float32", g.file)));
            }
            if !fits(dims, w) {
                return Err(ModelError::Backend(format!(
                    "{}: {what} {name:?} is {}, the package's spec needs {}",
                    g.file,
                    show(dims),
                    show(w)
                )));
            }
        }
    }
    Ok(())
}

impl OnnxBackend {
    pub fn new(package: &ModelPackage, opts: &OnnxOptions) -> Result<Self, ModelError> {
        let spec = &package.spec;
        let onnx = spec.onnx.as_ref().ok_or_else(|| {
            ModelError::Backend("the package has no [onnx] graphs (see `crlm model export-onnx`)".into())
        })?;
        let [x, y, z] = spec.ct.shape;
        let t = spec.slide.tile_px as usize;
        let e = spec.network.embed;
        let c = spec.clinical.width();
        let k = spec.network.intervals;
        let f = |v: usize| Dim::Fixed(v as i64);
        let n = || Dim::n("n");
        let shapes: [(Shapes, Shapes); 5] = [
            (vec![vec![f(z), f(y), f(x)]], vec![vec![f(1), f(e)], vec![f(z)]]),
            (vec![vec![n(), f(3), f(t), f(t)]], vec![vec![n(), f(e)]]),
            (vec![vec![n(), f(e)]], vec![vec![f(1), f(e)], vec![n()]]),
            (vec![vec![f(1), f(c)]], vec![vec![f(1), f(e)]]),
            (vec![vec![f(1), f(e)], vec![f(1), f(e)], vec![f(1), f(e)], vec![f(1), f(3)]], vec![vec![f(1), f(k)]]),
        ];
        let mut graphs = Vec::new();
        for ((part, g, _, _), (want_in, want_out)) in onnx.parts().into_iter().zip(&shapes) {
            let bytes = package
                .file(&g.file)
                .ok_or_else(|| ModelError::Backend(format!("{} (onnx.{part}) is not in the package", g.file)))?;
            let io = GraphIo::read(&g.file, bytes).map_err(backend_err)?;
            check_io(part, g, &io, want_in, want_out)?;
            graphs.push((g.clone(), bytes));
        }
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
        let int8 = onnx.precision == OnnxPrecision::Int8;
        let mut chosen = None;
        let mut failures = Vec::new();
        for p in &opts.providers {
            // The tile encoder first: if a provider cannot take it, it cannot serve the model.
            match session(env, graphs[1].1, opts, *p, int8) {
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
        let (provider, tile_session) = chosen.ok_or_else(|| {
            ModelError::Backend(format!("no ONNX Runtime provider could be registered: {}", failures.join("; ")))
        })?;
        let mut sessions = Vec::with_capacity(graphs.len());
        let mut tile_session = Some(tile_session);
        for (i, (g, bytes)) in graphs.iter().enumerate() {
            let s = match tile_session.take() {
                Some(s) if i == 1 => s,
                other => {
                    tile_session = other;
                    session(env, bytes, opts, provider, int8)
                        .map_err(|e| ModelError::Backend(format!("{}: {e}", g.file)))?
                }
            };
            sessions.push(Part { session: Mutex::new(s), inputs: g.inputs.clone(), outputs: g.outputs.clone() });
        }
        let [ct, tiles, pool, clinical, fusion]: [Part; 5] =
            sessions.try_into().map_err(|_| ModelError::Backend("internal: a graph is missing".into()))?;
        let backend = OnnxBackend {
            ct,
            tiles,
            pool,
            clinical,
            fusion,
            info: BackendInfo {
                name: "onnx".into(),
                provider: provider.name().into(),
                precision: onnx.precision.name().into(),
                runtime: Some(version.clone()),
            },
            ct_shape: [z, y, x],
            tile_px: t,
            clinical_width: c,
            embed: e,
            tile_batch: opts.tile_batch.max(1),
        };
        tracing::info!(provider = provider.name(), precision = onnx.precision.name(), onnxruntime = %version, "onnx backend ready");
        Ok(backend)
    }
}

impl Part {
    /// Run with one `(values, shape)` per input, in the package's order; one vector per output.
    fn run(&self, inputs: &[(&[f32], Vec<usize>)]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut session = self.session.lock().map_err(|_| backend_err("an ONNX Runtime session lock was poisoned"))?;
        let mut values = Vec::with_capacity(inputs.len());
        for (name, (data, shape)) in self.inputs.iter().zip(inputs) {
            let t = TensorRef::from_array_view((shape.clone(), *data)).map_err(backend_err)?;
            values.push((std::borrow::Cow::from(name.as_str()), ort::session::SessionInputValue::from(t)));
        }
        let out = session.run(values).map_err(|e| ModelError::Inference(format!("ONNX Runtime: {e}")))?;
        self.outputs
            .iter()
            .map(|name| {
                let v =
                    out.get(name).ok_or_else(|| ModelError::Inference(format!("the graph gave no output {name:?}")))?;
                let (_, data) =
                    v.try_extract_tensor::<f32>().map_err(|e| ModelError::Inference(format!("{name}: {e}")))?;
                Ok(data.to_vec())
            })
            .collect()
    }
}

/// An output must have exactly `len` values (a third-party graph may not).
fn sized(v: Vec<f32>, len: usize, what: &str) -> Result<Vec<f32>, ModelError> {
    if v.len() == len {
        Ok(v)
    } else {
        Err(ModelError::Inference(format!("{what}: {} values from the graph, expected {len}", v.len())))
    }
}

fn take2(mut v: Vec<Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
    let b = v.pop().unwrap_or_default();
    let a = v.pop().unwrap_or_default();
    (a, b)
}

impl Backend for OnnxBackend {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }

    fn forward(&self, input: &RawInput) -> Result<NetOutput, ModelError> {
        let e = self.embed;
        let [z, y, x] = self.ct_shape;
        let mut mask = [0f32; 3];
        let (e_ct, slice_attention) = match input.ct {
            Some(ct) => {
                let (emb, att) = take2(self.ct.run(&[(ct, vec![z, y, x])])?);
                mask[0] = 1.0;
                (sized(emb, e, "CT embedding")?, Some(sized(att, z, "slice attention")?))
            }
            None => (vec![0.0; e], None),
        };
        let (e_slide, tile_attention) = match input.tile_embeddings {
            Some((h, n)) => {
                let h = sized(h.to_vec(), n * e, "tile embeddings")?;
                let (emb, att) = take2(self.pool.run(&[(&h, vec![n, e])])?);
                mask[1] = 1.0;
                (sized(emb, e, "slide embedding")?, Some(sized(att, n, "tile attention")?))
            }
            None => (vec![0.0; e], None),
        };
        let e_clin = match input.clinical {
            Some(c) => {
                mask[2] = 1.0;
                let out = self.clinical.run(&[(c, vec![1, self.clinical_width])])?;
                sized(out.into_iter().next().unwrap_or_default(), e, "clinical embedding")?
            }
            None => vec![0.0; e],
        };
        let out = self.fusion.run(&[
            (&e_ct, vec![1, e]),
            (&e_slide, vec![1, e]),
            (&e_clin, vec![1, e]),
            (&mask, vec![1, 3]),
        ])?;
        let hazards = out.into_iter().next().unwrap_or_default();
        if hazards.is_empty() {
            return Err(ModelError::Inference("the fusion graph gave no hazards".into()));
        }
        Ok(NetOutput { hazards, slice_attention, tile_attention })
    }

    fn tile_batch(&self) -> usize {
        self.tile_batch
    }

    fn embed_tiles(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.tile_px;
        let per = 3 * t * t;
        if tiles.len() != n * per {
            return Err(ModelError::Input(format!("{} tile values for {n} tiles of {t} px", tiles.len())));
        }
        let mut out = Vec::with_capacity(n * self.embed);
        for chunk in tiles.chunks(self.tile_batch * per) {
            let m = chunk.len() / per;
            let h = self.tiles.run(&[(chunk, vec![m, 3, t, t])])?;
            out.extend(sized(h.into_iter().next().unwrap_or_default(), m * self.embed, "tile embeddings")?);
        }
        Ok(out)
    }
}
