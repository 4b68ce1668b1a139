//! The tile stream: every tile of a slide reaches the tile encoder in batches no larger than the
//! package's `tile_batch`, in order, and the embeddings do not depend on the batch size.

use crlm_models::backend::candle::CandleBackend;
use crlm_models::backend::{Backend, BackendInfo, RawInput};
use crlm_models::error::ModelError;
use crlm_models::limits::Limits;
use crlm_models::net::NetOutput;
use crlm_models::package::spec::{MaxTiles, SlideInputSpec, TileSampling};
use crlm_models::package::{ModelPackage, PackageSource, TrustStore};
use crlm_models::slide::read::SlideReader;
use crlm_models::slide::sample::sample_tiles;
use crlm_models::slide::{SlideSpec, write_pyramidal_tiff};
use crlm_models::tile_stream::{StreamOptions, encode_tiles};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every tissue tile (`max_tiles = "all"`, 64 px at 1 um/px) of a slide written into `dir`.
fn every_tile(dir: &std::path::Path) -> crlm_models::slide::sample::ModelTiles {
    let path = dir.join("s.tif");
    write_pyramidal_tiff(&path, &SlideSpec { label_text: None, ..SlideSpec::small(1400, 1000) }).unwrap();
    let spec = SlideInputSpec {
        tile_px: 64,
        microns_per_pixel: 1.0,
        min_tissue: 0.0,
        max_tiles: MaxTiles::All,
        sampling: TileSampling::Even,
        tile_batch: None,
        tile_mean: None,
        tile_std: None,
    };
    let reader = Arc::new(SlideReader::open(&path, &Limits::default()).unwrap());
    sample_tiles(reader, &spec, spec.max_tiles.per_slide(1)).unwrap()
}

/// The demo's candle backend, counting what its tile encoder is given.
struct Counting {
    inner: CandleBackend,
    calls: AtomicUsize,
    largest: AtomicUsize,
}

impl Backend for Counting {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn forward(&self, input: &RawInput) -> Result<NetOutput, ModelError> {
        self.inner.forward(input)
    }
    fn embed_tiles(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(n, Ordering::Relaxed);
        self.inner.embed_tiles(tiles, n)
    }
}

#[test]
fn every_tile_is_encoded_in_bounded_batches_and_the_batch_size_does_not_change_the_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let plan = every_tile(dir.path());
    let demo = ModelPackage::load(&PackageSource::BuiltInDemo, &TrustStore::default()).unwrap();
    assert_eq!(plan.tiles.len(), plan.tissue_tiles, "\"all\" keeps every tissue tile");
    assert!(plan.tiles.len() > 50, "{} tiles", plan.tiles.len());
    let n = plan.tiles.len();
    let slides = [plan];
    let net = demo.spec.network.as_ref().unwrap();
    let opts = |batch| StreamOptions { batch, threads: 2, mean: net.tile_mean, std: net.tile_std };

    let counting = Counting { inner: CandleBackend::new(&demo).unwrap(), calls: 0.into(), largest: 0.into() };
    let small = encode_tiles(&counting, &slides, opts(16)).unwrap();
    assert_eq!((small.n, small.width), (n, net.embed));
    assert_eq!(small.values.len(), n * net.embed);
    assert_eq!(counting.largest.load(Ordering::Relaxed), 16);
    assert_eq!(counting.calls.load(Ordering::Relaxed), n.div_ceil(16));

    let whole = encode_tiles(&counting.inner, &slides, opts(n)).unwrap();
    let worst = small.values.iter().zip(&whole.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5, "batch of 16 vs one batch: max |diff| {worst}");

    // The embeddings are the tiles' own, in order: tile k alone gives row k.
    let k = n / 2;
    let px = slides[0].read(k..k + 1, 1).unwrap();
    let one = counting
        .inner
        .embed_tiles(&crlm_models::tile_stream::normalise(&px, 64, net.tile_mean, net.tile_std), 1)
        .unwrap();
    let row = &small.values[k * net.embed..(k + 1) * net.embed];
    assert!(one.iter().zip(row).all(|(a, b)| (a - b).abs() <= 1e-5));
}

/// An encoder that fails stops the stream with its error (the reader stops too, no hang).
#[test]
fn a_failing_encoder_stops_the_reader() {
    struct Failing;
    impl Backend for Failing {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                name: "failing".into(),
                provider: "cpu".into(),
                precision: "fp32".into(),
                runtime: None,
                parts: Default::default(),
            }
        }
        fn forward(&self, _: &RawInput) -> Result<NetOutput, ModelError> {
            Err(ModelError::Inference("no".into()))
        }
        fn embed_tiles(&self, _: &[f32], _: usize) -> Result<Vec<f32>, ModelError> {
            Err(ModelError::Inference("the encoder failed".into()))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = every_tile(dir.path());
    let opts = StreamOptions { batch: 4, threads: 1, mean: [0.0; 3], std: [1.0; 3] };
    let e = encode_tiles(&Failing, &[plan], opts).unwrap_err();
    assert!(e.to_string().contains("the encoder failed"), "{e}");
}
