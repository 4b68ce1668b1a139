//! crlm-core: the foundation every crlm crate may use, and which uses none of them.
//!
//! - Owns: [`fsutil`], durable file writes (temp file, fsync, rename, fsync the directory) for
//!   everything written outside SQLite: keys, quarantine records, NIfTI volumes, model packages,
//!   panel frames.
//! - Inputs and outputs: bytes and paths.
//! - Place in the data path: beneath it; every stage that writes a file writes it through here.

pub mod fsutil;
