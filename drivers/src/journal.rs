//! Logging set-up: structured journal records under systemd, readable stderr elsewhere.
//!
//! Under systemd, each tracing event becomes one journal entry whose fields (`case`, `stage`,
//! `error_kind`, ...) are journal fields (upper-cased, as journald requires), sent through
//! systemd-journal-logger's native protocol client. `journalctl -o verbose` shows them.

use std::fmt::Write as _;
use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal if stderr is connected to it (a systemd service), else stderr.
    Auto,
    Journal,
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot connect to the systemd journal: {0}")]
    Journal(#[from] std::io::Error),
    #[error("invalid log filter `{0}`: {1}")]
    Filter(String, String),
    #[error("logging already initialised")]
    AlreadyInitialised,
}

/// Install the global subscriber. `filter` is an EnvFilter directive (`info`, `crlm=debug`, ...);
/// `RUST_LOG` overrides it.
pub fn init(filter: &str, target: LogTarget) -> Result<LogTarget, LogError> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => v,
        _ => filter.to_string(),
    };
    let env_filter = EnvFilter::try_new(quiet_embedded_broker(&directives))
        .map_err(|e| LogError::Filter(directives.clone(), e.to_string()))?;
    let use_journal = match target {
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => systemd_journal_logger::connected_to_journal(),
    };
    let registry = tracing_subscriber::registry().with(env_filter);
    if use_journal {
        let journal = JournalLog::new()?.with_syslog_identifier("crlm".to_string());
        registry.with(JournalLayer { journal }).try_init().map_err(|_| LogError::AlreadyInitialised)?;
        Ok(LogTarget::Journal)
    } else {
        registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    // Colour codes only on a terminal: log files and collectors get plain text.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init()
            .map_err(|_| LogError::AlreadyInitialised)?;
        Ok(LogTarget::Stderr)
    }
}

/// The embedded broker (rumqttd) logs every client that goes away as an error; that would page
/// an operator for nothing, so its logs are off unless the filter names it.
fn quiet_embedded_broker(directives: &str) -> String {
    if directives.contains("rumqttd") { directives.to_string() } else { format!("{directives},rumqttd=off") }
}

/// A tracing layer that sends every event to the journal with its fields.
pub struct JournalLayer {
    journal: JournalLog,
}

/// Collects an event's message and fields.
#[derive(Default)]
pub struct FieldCollector {
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Visit for FieldCollector {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.push(field, s);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }
}

impl FieldCollector {
    fn push(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((journal_field_name(field.name()), value));
        }
    }
}

/// Journal field names are upper-case ASCII letters, digits and underscores, not starting
/// with an underscore (those are trusted fields).
pub fn journal_field_name(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    while s.starts_with('_') {
        s.remove(0);
    }
    if s.is_empty() { "FIELD".into() } else { s }
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut c = FieldCollector::default();
        event.record(&mut c);
        let level = match *event.metadata().level() {
            Level::ERROR => log::Level::Error,
            Level::WARN => log::Level::Warn,
            Level::INFO => log::Level::Info,
            Level::DEBUG => log::Level::Debug,
            Level::TRACE => log::Level::Trace,
        };
        let kvs: Vec<(&str, &str)> = c.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args = format_args!("{}", c.message);
        let record = log::Record::builder()
            .level(level)
            .target(event.metadata().target())
            .module_path(event.metadata().module_path())
            .file(event.metadata().file())
            .line(event.metadata().line())
            .key_values(&kvs)
            .args(args)
            .build();
        // A journal that went away must not take the service down; stderr gets the record.
        if self.journal.journal_send(&record).is_err() {
            eprintln!("{} {}", level, c.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_follow_journal_rules() {
        assert_eq!(journal_field_name("case"), "CASE");
        assert_eq!(journal_field_name("error.kind"), "ERROR_KIND");
        assert_eq!(journal_field_name("_secret"), "SECRET");
    }

    #[test]
    fn the_embedded_broker_is_quiet_unless_named() {
        assert_eq!(quiet_embedded_broker("info"), "info,rumqttd=off");
        assert_eq!(quiet_embedded_broker("info,rumqttd=warn"), "info,rumqttd=warn");
        assert!(EnvFilter::try_new(quiet_embedded_broker("warn")).is_ok());
    }
}
