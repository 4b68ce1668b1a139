//! Hardware in the loop: the same scenarios run against the service wherever it runs.
//!
//! # In the data path
//!
//! - Owns: the [`Device`] trait (put files in the share, start, stop, kill, freeze or power-cut the
//!   box, read its panel, journal and state), its targets ([`local`]: `crlm run` as a process on
//!   this machine under a supervisor that keeps systemd's notify and watchdog contract; [`qemu`]:
//!   a virtual aarch64 box under real systemd; [`ssh`]: a real box reached over SSH), the host
//!   side of a site ([`host`]: an MQTT broker, the study office's collector, an independent
//!   subscriber and the relay that can partition box and broker), the [`scenario`]s and their
//!   [`report`]s.
//! - Inputs: a `crlm` binary (or a box running one), the project's own writers (`crlm synth`) for
//!   the exports, and the reliability corpus of malformed files the scenarios write.
//! - Outputs: per scenario a pass, a failure with what went wrong, or a skip with the reason, its
//!   timings and what was lost (must be 0), as JUnit XML and Markdown.
//! - Place: outside the data path. It drives the whole appliance from the outside, as lab staff,
//!   the network, the power supply and the study office do: share -> **box** -> broker ->
//!   collector, and checks what each end holds.
//! - Depends on: nothing of the appliance's crates. It talks to the box only through the `crlm`
//!   command line, its files and MQTT, so the same code drives a box of another build over SSH.

pub mod device;
pub mod host;
pub mod local;
pub mod qemu;
pub mod report;
pub mod scenario;
pub mod ssh;
pub mod wire;

pub use device::{Device, DeviceError, Supervision};
