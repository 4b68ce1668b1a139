//! `crlm predict`: one case folder through the service's own recognition, series selection,
//! eligibility, preprocessing and the model, without the service. Each modality ends `used`,
//! `missing` or `refused` with a reason; the package decides whether the subset present may be
//! predicted from.
//!
//! # In the data path
//!
//! - Owns: turning one case's files into the model's inputs and running the model: `gather`, `prepare_files` (the one preparation the service and `crlm predict` share), `predict_prepared`, the model loader.
//! - Inputs: a case folder, or the files and series choice the service hands over.
//! - Outputs: `PreparedCase`, `CaseResult` (typed eligibility, modalities, output; and the `crlm predict --json` document, typed as `doc::PredictDocument`).
//! - Place: state -> **predict** (the worker calls it) -> ledger.
//! - Depends on: crlm-ingest (recognition, series, eligibility rules), crlm-config, crlm-models.

use crlm_config::Config;
use crlm_models::backend::{BackendKind, OnnxOptions};
use crlm_models::embedding_cache::EmbeddingCache;
use crlm_models::inference::{Model, ModelError};
use crlm_models::package::{ModelPackage, PackageSource, TrustStore};
use std::path::Path;

pub mod doc;
mod prepare;
mod run;
mod timings;
mod tools;
pub use prepare::*;
pub use run::*;
pub use timings::Timings;
pub use tools::*;

/// What every output of a demo package carries.
pub const DEMO_NOTICE: &str = "DEMO - NOT FOR CLINICAL USE";
/// Version of the `crlm predict --json` document.
pub const PREDICT_FORMAT: u32 = 1;
/// How many of the highest-attention tiles are reported.
pub const TOP_TILES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Case(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Load the configured package (or `override_path`), verify it, and build the network on the
/// configured backend.
pub fn load_model(cfg: &Config, override_path: Option<&Path>) -> Result<Model, ModelError> {
    load_model_on(cfg, override_path, cfg.model.backend)
}

/// As [`load_model`], on the given backend.
pub fn load_model_on(cfg: &Config, override_path: Option<&Path>, backend: BackendKind) -> Result<Model, ModelError> {
    let trust = TrustStore::from_files(&cfg.model.trusted_keys)?;
    let package = ModelPackage::load(&package_source(cfg, override_path), &trust)?;
    let mut model = Model::with_backend(package, backend, &onnx_options(cfg), cfg.model.horizon_months)?
        .with_read_threads(cfg.model.threads);
    // The tile-embedding cache lives in the state folder, when that exists (on the box), so
    // `crlm predict` in some other folder leaves nothing behind.
    if cfg.model.embedding_cache_mib > 0 && cfg.state.path.is_dir() {
        model = model.with_embedding_cache(EmbeddingCache::new(
            cfg.state.path.join("embeddings"),
            cfg.model.embedding_cache_mib.saturating_mul(1 << 20),
        ));
    }
    let info = model.backend_info();
    tracing::info!(
        backend = %info.name, provider = %info.provider, precision = %info.precision,
        onnxruntime = info.runtime.as_deref().unwrap_or("-"), "model backend"
    );
    Ok(model)
}

/// `[onnx]` with the engine cache defaulting to `<state.path>/trt-engines`.
pub fn onnx_options(cfg: &Config) -> OnnxOptions {
    let mut o = cfg.onnx.clone();
    if o.engine_cache.as_os_str().is_empty() {
        o.engine_cache = cfg.state.path.join("trt-engines");
    }
    o
}

/// Which package: `override_path`, else `model.path`, else the built-in demo.
pub fn package_source(cfg: &Config, override_path: Option<&Path>) -> PackageSource {
    match override_path {
        Some(p) => PackageSource::from_path(p),
        None if cfg.model.path.as_os_str().is_empty() => PackageSource::BuiltInDemo,
        None => PackageSource::from_path(&cfg.model.path),
    }
}
