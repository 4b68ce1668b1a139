//! The front panel: what to show ([`state`]), how it looks ([`ui`], hardware-agnostic), and the
//! service task that renders it at most a few times a second ([`task`]).

pub mod feed;
pub mod state;
pub mod task;
pub mod ui;
