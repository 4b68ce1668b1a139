//! The end-to-end tests: one test binary (one link of the whole workspace instead of one per
//! file), one module per area. Helpers shared by all are in the crate's library (`crlm_e2e`).

mod attacks;
mod backends;
mod cli;
mod health;
mod ledger;
mod legacy;
mod model;
mod mqtt;
mod openslide;
mod outputs;
mod schemas;
mod service;
mod service_path;
mod shared_data;
mod simpleitk;
mod validate;
