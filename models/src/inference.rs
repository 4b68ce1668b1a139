//! A verified package and CRLM-Net, ready to predict: the modality policy (which subsets the
//! package allows), tensors from preprocessed inputs, calibration and the risk group at the
//! package's locked threshold.

use crate::backend::{Backend, BackendInfo, BackendKind, OnnxOptions, RawInput};
use crate::ct::preprocess::CtTensor;
use crate::embedding_cache::EmbeddingCache;
use crate::encode::{EncodedClinical, check_encoding};
use crate::package::spec::{DEFAULT_HORIZON_MONTHS, TimeSpec};
use crate::package::{Modality, ModelPackage};
use crate::slide::sample::ModelTiles;
use crate::tile_stream::{StreamOptions, TileEmbeddings, encode_tiles};
use serde::Serialize;

pub use crate::error::ModelError;

/// One modality of a case as it reaches the model.
#[derive(Debug, Clone)]
pub enum ModalityInput<T> {
    Used(T),
    /// Not in the case.
    Missing,
    /// In the case but unusable, with the reason.
    Refused(String),
}

impl<T> ModalityInput<T> {
    pub fn used(&self) -> Option<&T> {
        match self {
            ModalityInput::Used(t) => Some(t),
            _ => None,
        }
    }
    /// `used`, `missing` or `refused`, and the reason.
    pub fn status(&self) -> (&'static str, Option<&str>) {
        match self {
            ModalityInput::Used(_) => ("used", None),
            ModalityInput::Missing => ("missing", None),
            ModalityInput::Refused(r) => ("refused", Some(r)),
        }
    }
}

/// Everything the model reads for one case.
#[derive(Debug, Clone)]
pub struct CaseInputs {
    pub ct: ModalityInput<CtTensor>,
    /// Tiles of every slide of the case (the package's `max_tiles` over all of them).
    pub slides: ModalityInput<Vec<ModelTiles>>,
    pub clinical: ModalityInput<EncodedClinical>,
}

impl CaseInputs {
    pub fn present(&self) -> Vec<Modality> {
        let mut v = Vec::new();
        if self.ct.used().is_some() {
            v.push(Modality::Ct);
        }
        if self.slides.used().is_some() {
            v.push(Modality::Slide);
        }
        if self.clinical.used().is_some() {
            v.push(Modality::Clinical);
        }
        v
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskGroup {
    High,
    Low,
}

impl RiskGroup {
    /// `high` or `low`, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            RiskGroup::High => "high",
            RiskGroup::Low => "low",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelOutput {
    /// Calibrated probability of liver metastasis by the study horizon (24 months unless
    /// configured otherwise), from exactly the package's intervals up to it.
    pub risk_2y: f64,
    pub risk_2y_uncalibrated: f64,
    pub risk_group: RiskGroup,
    pub threshold: f64,
    pub hazards: Vec<f32>,
    /// The months each of `hazards` covers (the package's time axis).
    pub intervals_months: Vec<[u32; 2]>,
    /// The horizon `risk_2y` is at, in months.
    pub horizon_months: u32,
    /// Tiles through the tile encoder, and tiles whose embeddings came from the cache.
    pub tiles: TileCounts,
    /// Attention over the CT's slices (model grid, z order).
    pub slice_attention: Option<Vec<f32>>,
    /// Attention over tiles, in the order of `CaseInputs::slides` then tiles.
    pub tile_attention: Option<Vec<f32>>,
}

/// How a case's tiles reached the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TileCounts {
    pub encoded: usize,
    pub from_cache: usize,
}

pub struct Model {
    pub package: ModelPackage,
    backend: Box<dyn Backend>,
    time: TimeSpec,
    horizon_months: u32,
    /// How many outputs make the risk at the horizon.
    steps: usize,
    /// Threads reading and decoding slide tiles.
    read_threads: usize,
    cache: Option<EmbeddingCache>,
}

fn set_list(m: &[Modality]) -> String {
    if m.is_empty() {
        return "nothing".into();
    }
    format!("[{}]", m.iter().map(|x| x.name()).collect::<Vec<_>>().join(", "))
}

impl Model {
    /// CRLM-Net from a verified package on the candle backend (CPU).
    pub fn new(package: ModelPackage) -> Result<Self, ModelError> {
        Self::with_backend(package, BackendKind::Candle, &OnnxOptions::default(), DEFAULT_HORIZON_MONTHS)
    }

    /// A verified package on the chosen backend, its risk at `horizon_months` (the study's
    /// horizon, `model.horizon_months`): refused when the package's time axis has no interval
    /// ending there.
    pub fn with_backend(
        package: ModelPackage,
        kind: BackendKind,
        onnx: &OnnxOptions,
        horizon_months: u32,
    ) -> Result<Self, ModelError> {
        let problems = check_encoding(&package.spec.clinical);
        if !problems.is_empty() {
            return Err(ModelError::Encoding(problems.join("; ")));
        }
        let time = package.spec.time_axis();
        let steps = time.steps_to(horizon_months).map_err(ModelError::Horizon)?;
        let backend = crate::backend::build(&package, kind, onnx)?;
        let read_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Model { package, backend, time, horizon_months, steps, read_threads, cache: None })
    }

    /// Read slide tiles on `threads` threads (0: every core).
    pub fn with_read_threads(mut self, threads: usize) -> Self {
        if threads > 0 {
            self.read_threads = threads;
        }
        self
    }

    /// Keep tile embeddings in `cache` and reuse them (same slide, same package, same tiles).
    pub fn with_embedding_cache(mut self, cache: EmbeddingCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// How tiles stream into this model's tile encoder.
    pub fn stream_options(&self) -> StreamOptions {
        let (mean, std) = self.package.spec.tile_normalisation();
        StreamOptions {
            batch: self.package.spec.slide.tile_batch.unwrap_or_else(|| self.backend.tile_batch()),
            threads: self.read_threads,
            mean,
            std,
        }
    }

    /// The horizon of `risk_2y`, in months.
    pub fn horizon_months(&self) -> u32 {
        self.horizon_months
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn backend_info(&self) -> BackendInfo {
        self.backend.info()
    }

    /// The tile encoder over every tile of `slides`, streamed (memory bounded by the batch), or
    /// a slide's embeddings from the cache; and how many tiles were encoded and how many came
    /// from the cache.
    pub fn encode_tiles(&self, slides: &[ModelTiles]) -> Result<(TileEmbeddings, TileCounts), ModelError> {
        let t = self.package.spec.slide.tile_px;
        if let Some(m) = slides.iter().find(|m| m.tile_px != t) {
            return Err(ModelError::Input(format!("tiles of {} px, the package wants {t}", m.tile_px)));
        }
        let Some(cache) = &self.cache else {
            let e = encode_tiles(self.backend.as_ref(), slides, self.stream_options())?;
            let counts = TileCounts { encoded: e.n, from_cache: 0 };
            return Ok((e, counts));
        };
        let mut all = TileEmbeddings { values: Vec::new(), n: 0, width: 0 };
        let mut counts = TileCounts::default();
        for m in slides {
            let slide_sha = m.slide_sha256().map_err(|e| ModelError::Input(e.to_string()))?;
            let key = crate::embedding_cache::key(&self.package.sha256, &slide_sha, m);
            let e = match cache.get(&key).filter(|e| e.n == m.tiles.len()) {
                Some(e) => {
                    counts.from_cache += e.n;
                    e
                }
                None => {
                    let e = encode_tiles(self.backend.as_ref(), std::slice::from_ref(m), self.stream_options())?;
                    cache.put(&key, &e);
                    counts.encoded += e.n;
                    e
                }
            };
            if all.n > 0 && e.width != all.width {
                return Err(ModelError::Inference("tile embeddings of different widths".into()));
            }
            all.width = e.width;
            all.n += e.n;
            all.values.extend_from_slice(&e.values);
        }
        Ok((all, counts))
    }

    /// Predict, or refuse when the package does not allow the modalities present.
    pub fn predict(&self, inputs: &CaseInputs) -> Result<ModelOutput, ModelError> {
        let spec = &self.package.spec;
        let present = inputs.present();
        if !spec.modalities.allows(&present) {
            let why = Modality::ALL
                .iter()
                .filter(|m| !present.contains(m))
                .map(|m| {
                    let st = match m {
                        Modality::Ct => inputs.ct.status(),
                        Modality::Slide => inputs.slides.status(),
                        Modality::Clinical => inputs.clinical.status(),
                    };
                    format!("{} {}{}", m.name(), st.0, st.1.map(|r| format!(": {r}")).unwrap_or_default())
                })
                .collect::<Vec<_>>()
                .join("; ");
            let allowed = spec.modalities.allowed.iter().map(|s| set_list(s)).collect::<Vec<_>>().join(" or ");
            return Err(ModelError::ModalitiesNotAllowed { present: set_list(&present), allowed, why });
        }
        let ct = match inputs.ct.used() {
            Some(c) => {
                if c.shape != spec.ct.shape {
                    return Err(ModelError::Input(format!(
                        "CT tensor {:?}, the package wants {:?}",
                        c.shape, spec.ct.shape
                    )));
                }
                Some(c.data.as_slice())
            }
            None => None,
        };
        let tiles = match inputs.slides.used() {
            Some(m) => {
                if m.iter().all(|m| m.tiles.is_empty()) {
                    return Err(ModelError::Input("no tissue tiles".into()));
                }
                Some(self.encode_tiles(m)?)
            }
            None => None,
        };
        let tile_counts = tiles.as_ref().map(|(_, c)| *c).unwrap_or_default();
        let tiles = tiles.map(|(e, _)| e);
        let clinical = match inputs.clinical.used() {
            Some(e) => {
                if e.values.len() != spec.clinical.width() {
                    return Err(ModelError::Input("clinical vector width differs from the package's".into()));
                }
                Some(e.values.as_slice())
            }
            None => None,
        };
        let raw = RawInput { ct, tile_embeddings: tiles.as_ref().map(|e| (e.values.as_slice(), e.n)), clinical };
        let out = self.backend.forward(&raw)?;
        if out.hazards.len() != self.time.outputs() {
            return Err(ModelError::Inference(format!(
                "the network gave {} outputs, the package's time axis has {}",
                out.hazards.len(),
                self.time.outputs()
            )));
        }
        let uncalibrated = self.time.risk(&out.hazards, self.steps);
        let risk = spec.calibration.apply(uncalibrated);
        let threshold = spec.decision.threshold;
        Ok(ModelOutput {
            risk_2y: risk,
            risk_2y_uncalibrated: uncalibrated,
            risk_group: if risk >= threshold { RiskGroup::High } else { RiskGroup::Low },
            threshold,
            hazards: out.hazards,
            intervals_months: self.time.intervals_months(),
            tiles: tile_counts,
            horizon_months: self.horizon_months,
            slice_attention: out.slice_attention,
            tile_attention: out.tile_attention,
        })
    }
}
