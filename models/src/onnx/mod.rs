//! ONNX tools that run offline, in pure Rust: CRLM-Net's parts exported from a package's weights
//! ([`export`]) and INT8 QDQ graphs from calibrated activation ranges ([`quantize`]). The graph
//! format itself is [`crate::graph`] (re-exported here); the runtime is [`crate::backend`].

pub mod export;
pub mod quantize;

pub use crate::graph::*;
