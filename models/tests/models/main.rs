//! crlm-models' integration tests: one test binary, one module per area.

mod alloc_probe;
mod ct;
mod dcmtk;
mod headers;
mod onnx;
mod package;
mod parity;
mod reference;
mod slides;
mod stream;
mod time;
