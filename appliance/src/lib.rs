//! crlm-appliance: the crlm-edge service and the `crlm` command-line tool.
//!
//! - [`config`]: the TOML configuration and its environment overrides.
//! - [`ingest`]: the watched share, recognition, cases, quarantine.
//! - [`state`]: the SQLite state database.
//! - [`service`]: `crlm run`, the long-running service.
//! - [`demo`]: `crlm demo`, the whole path on a generated case.
//! - [`panel`]: the front panel's state, screens and service task.
//!
//! See docs/ARCHITECTURE.md for the data path and which module owns each step.

pub mod cohort_export;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod fsutil;
pub mod ingest;
pub mod ledger;
pub mod mqtt;
pub mod outputs;
pub mod panel;
pub mod predict;
pub mod processing;
pub mod service;
pub mod state;
pub mod validate;
