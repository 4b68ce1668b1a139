//! Service-manager notification and the watchdog, behind [`Watchdog`].
//!
//! [`SystemdWatchdog`] speaks the sd_notify protocol (a datagram per message to the socket in
//! `$NOTIFY_SOCKET`) itself: it is a few lines, it takes an explicit socket path so tests can
//! run it against a real socket, and it needs no C library.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// What the service tells its supervisor. Failures are logged, never fatal: a missing
/// supervisor must not stop the pipeline.
pub trait Watchdog: Send + Sync {
    /// Start-up finished.
    fn ready(&self);
    /// One line saying what the service is doing.
    fn status(&self, status: &str);
    /// Proof of life from the main loop.
    fn ping(&self);
    /// Shutdown has begun.
    fn stopping(&self);
    /// How often pings are expected, if the supervisor watches (systemd's WatchdogSec).
    fn interval(&self) -> Option<Duration>;
}

/// No supervisor (a laptop, a test): every call does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoWatchdog;

impl Watchdog for NoWatchdog {
    fn ready(&self) {}
    fn status(&self, _: &str) {}
    fn ping(&self) {}
    fn stopping(&self) {}
    fn interval(&self) -> Option<Duration> {
        None
    }
}

/// systemd's notify socket.
#[derive(Debug)]
pub struct SystemdWatchdog {
    socket: PathBuf,
    interval: Option<Duration>,
}

impl SystemdWatchdog {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`; `None` when not under systemd.
    pub fn from_env() -> Option<Self> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let pid_matches = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let interval = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|_| pid_matches)
            .filter(|u| *u > 0)
            .map(Duration::from_micros);
        Some(Self::new(PathBuf::from(socket), interval))
    }

    pub fn new(socket: PathBuf, interval: Option<Duration>) -> Self {
        SystemdWatchdog { socket, interval }
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.try_send(msg) {
            tracing::warn!(error = %e, "service manager notification failed");
        }
    }

    fn try_send(&self, msg: &str) -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let raw = self.socket.as_os_str().as_encoded_bytes();
        if let Some(name) = raw.strip_prefix(b"@") {
            // Abstract socket namespace (systemd may hand one out).
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?;
        } else {
            sock.send_to(msg.as_bytes(), &self.socket)?;
        }
        Ok(())
    }
}

impl Watchdog for SystemdWatchdog {
    fn ready(&self) {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }
    fn status(&self, status: &str) {
        // One line only: the protocol is newline-separated.
        let line: String = status.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
        self.send(&format!("STATUS={line}"));
    }
    fn ping(&self) {
        if self.interval.is_some() {
            self.send("WATCHDOG=1");
        }
    }
    fn stopping(&self) {
        self.send("STOPPING=1");
    }
    fn interval(&self) -> Option<Duration> {
        self.interval
    }
}

/// The supervisor this process runs under: systemd when `$NOTIFY_SOCKET` is set, else none.
pub fn from_environment() -> Box<dyn Watchdog> {
    match SystemdWatchdog::from_env() {
        Some(w) => Box::new(w),
        None => Box::new(NoWatchdog),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_messages_arrive_on_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let w = SystemdWatchdog::new(path, Some(Duration::from_secs(10)));
        let mut buf = [0u8; 256];
        let mut recv = || {
            let n = server.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        w.ready();
        assert!(recv().starts_with("READY=1\nMAINPID="));
        w.status("scanning\nshare");
        assert_eq!(recv(), "STATUS=scanning share");
        w.ping();
        assert_eq!(recv(), "WATCHDOG=1");
        w.stopping();
        assert_eq!(recv(), "STOPPING=1");
    }

    #[test]
    fn pings_are_not_sent_when_no_watchdog_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let w = SystemdWatchdog::new(path, None);
        w.ping();
        let mut buf = [0u8; 64];
        assert!(server.recv(&mut buf).is_err());
    }
}
