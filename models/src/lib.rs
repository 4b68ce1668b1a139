//! crlm-models: everything that turns scanner exports into model inputs.
//!
//! - [`dicom`]: DICOM header reading, completeness checks and a series writer (fixtures, demo).
//! - [`slide`]: TIFF/BigTIFF/SVS header reading, completeness checks and a pyramidal TIFF writer.
//! - [`clinical`]: the clinical-data file, schema v1 (JSON object or CSV rows).
//! - [`synth`]: a synthetic case generator (CT series, slide, clinical file) for tests and the demo.
//! - [`limits`]: size limits checked before anything is allocated; [`memory`]: the per-thread
//!   allocation cap behind them while dicom-rs parses (the `crlm` binary installs its allocator).
//!
//! - [`cohort`]: the synthetic cohort with a planted risk signal (the demo model learns from it).
//! - [`package`]: signed model packages (`model.toml`, weights, manifest, Ed25519 signature).
//! - [`encode`]: clinical record -> the package's feature vector with missingness.
//! - [`net`]: CRLM-Net v1 in candle.
//! - [`inference`]: model inputs -> prediction (modality policy, calibration, risk group).
//! - [`backend`]: where the network runs: candle, or ONNX Runtime (feature `onnx`).
//! - [`graph`]: ONNX graphs as data (protobuf messages, builder, interface checks), in pure Rust.
//! - [`onnx`]: ONNX export of CRLM-Net and INT8 QDQ quantisation, in pure Rust (offline tools).
//! - [`tile_stream`]: a case's tiles read, normalised and encoded batch by batch (bounded memory);
//!   [`embedding_cache`]: a slide's embeddings kept by slide and package hash.
//! - [`case`], [`calibration`], [`error`]: the case vocabulary, calibration ranges, the model's error.

pub mod backend;
pub mod calibration;
pub mod case;
pub mod clinical;
#[cfg(any(test, feature = "write"))]
pub mod cohort;
pub mod ct;
pub mod dicom;
pub mod embedding_cache;
pub mod encode;
pub mod error;
pub mod graph;
pub mod inference;
pub mod limits;
pub mod memory;
pub mod net;
pub mod onnx;
pub mod package;
pub mod slide;
#[cfg(any(test, feature = "write"))]
pub mod synth;
pub mod tile_stream;

/// SHA-256 of a byte slice as lowercase hex.
/// SHA-256 (lowercase hex) and length of everything `r` gives, read in 1 MiB blocks; `tick`
/// after each block (a watchdog, say). Package files, slides and the share's files are hashed
/// with it.
pub fn sha256_stream(mut r: impl std::io::Read, mut tick: impl FnMut()) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(buf.get(..n).unwrap_or_default());
        tick();
    }
    Ok((hex::encode(h.finalize()), size))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
