//! crlm-drivers: hardware and host services behind small traits, each with a host
//! implementation that runs on a laptop or in CI.
//!
//! - [`watchdog`]: service-manager notifications (READY, STATUS, WATCHDOG pings) — systemd's
//!   notify socket on the device, nothing on a laptop.
//! - [`journal`]: logging — structured records to the systemd journal when the service runs
//!   under systemd, readable text on stderr elsewhere.
//!
//! - [`display`]: front-panel displays — PNG file, Linux framebuffer, SPI panels (feature `spi`).
//!
//! The board-health drivers land here too (see docs/ARCHITECTURE.md).

pub mod display;
pub mod health;
pub mod journal;
pub mod watchdog;
