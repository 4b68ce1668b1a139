//! The front panel: what to show ([`state`]), how it looks ([`ui`], hardware-agnostic), and the
//! service task that renders it at most a few times a second ([`task`]).
//!
//! # In the data path
//!
//! - Owns: what the front panel shows, its screens and the task that draws them.
//! - Inputs: the state database (pseudonyms only) and the service's events.
//! - Outputs: frames for a `crlm_drivers::display::Display`.
//! - Place: state -> **panel** -> display driver.
//! - Depends on: crlm-state, crlm-config, crlm-drivers.

pub mod feed;
pub mod state;
pub mod task;
pub mod ui;
