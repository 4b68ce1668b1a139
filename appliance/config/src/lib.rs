//! Configuration: one TOML file, every key with a laptop-friendly default, overridable from the
//! environment as `CRLM_<SECTION>__<KEY>`. Loading is two-phase: the file and environment are
//! merged into a TOML tree and checked against the known keys (all unknown keys reported at
//! once), then deserialised and validated (all bad values reported at once, each naming its key
//! and the allowed values). The annotated default file is [`DEFAULT_TOML`]; a test keeps it equal
//! to [`Config::default`].
//!
//! # In the data path
//!
//! - Owns: the configuration file, its defaults, environment overrides and validation; `ResultMode`.
//! - Inputs: a TOML file and `CRLM_*` variables.
//! - Outputs: a typed, validated `Config` whose sections every stage reads.
//! - Place: beside the path: every stage is built from its section.
//! - Depends on: crlm-models (limits, ONNX options).

use crlm_models::limits::Limits;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The annotated default configuration (`crlm config default`).
pub const DEFAULT_TOML: &str = include_str!("../crlm.default.toml");

mod sections;
pub use sections::*;

/// Environment variables that override keys start with this.
pub const ENV_PREFIX: &str = "CRLM_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub share: ShareConfig,
    pub state: StateConfig,
    pub cases: CasesConfig,
    pub series: SeriesConfig,
    pub eligibility: EligibilityConfig,
    pub quarantine: QuarantineConfig,
    pub limits: Limits,
    pub display: DisplayConfig,
    pub model: ModelConfig,
    pub onnx: crlm_models::backend::OnnxOptions,
    pub ledger: LedgerConfig,
    pub outputs: OutputsConfig,
    pub privacy: PrivacyConfig,
    pub mqtt: MqttConfig,
    pub log: LogConfig,
}

/// Every problem found in a configuration, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(p: String) -> Self {
        ConfigError { problems: vec![p] }
    }
}

impl Config {
    /// Load `file` (or the defaults when `None`) with `CRLM_*` overrides from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError::one(format!("cannot read config file {}: {e}", p.display())))?,
            None => String::new(),
        };
        let env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        Self::from_sources(&text, &env, file)
    }

    /// Merge a TOML text with environment overrides, check keys, deserialise and validate.
    pub fn from_sources(text: &str, env: &[(String, String)], origin: Option<&Path>) -> Result<Config, ConfigError> {
        let where_ = origin.map(|p| p.display().to_string()).unwrap_or_else(|| "configuration".into());
        let mut tree: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::one(format!("{where_}: not valid TOML: {e}")))?;
        let mut problems = Vec::new();
        for (k, v) in env {
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else { continue };
            if rest == "CONFIG" {
                continue; // CRLM_CONFIG names the file, it is not a key.
            }
            let Some((section, key)) = rest.split_once("__") else {
                problems.push(format!(
                    "environment variable {k}: expected CRLM_<SECTION>__<KEY>, e.g. CRLM_SHARE__QUIET_SECONDS"
                ));
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let table = tree.entry(section.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
            match table.as_table_mut() {
                Some(t) => {
                    t.insert(key, env_value(v));
                }
                None => problems.push(format!("environment variable {k}: `{section}` is not a section")),
            }
        }
        problems.extend(unknown_keys(&tree));
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| ConfigError::one(format!("{where_}: {}: {}", e.path(), e.inner().message())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check values; collect every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut positive = |key: &str, v: f64| {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("{key} = {v}: must be a number of seconds greater than 0"));
            }
        };
        positive("share.quiet_seconds", self.share.quiet_seconds);
        positive("share.poll_seconds", self.share.poll_seconds);
        positive("share.incomplete_timeout_seconds", self.share.incomplete_timeout_seconds);
        positive("model.case_timeout_seconds", self.model.case_timeout_seconds);
        positive("cases.partial_after_seconds", self.cases.partial_after_seconds);
        if self.mqtt.enabled && self.mqtt.protocol == MqttProtocol::V5 && self.mqtt.url.is_empty() {
            p.push(
                "mqtt.protocol = \"5\" needs an external broker (mqtt.url): the embedded broker speaks MQTT 3.1.1"
                    .into(),
            );
        }
        if self.onnx.providers.is_empty() {
            p.push("onnx.providers is empty: list some of \"tensorrt\", \"cuda\", \"cpu\"".into());
        }
        if self.onnx.tile_batch == 0 {
            p.push("onnx.tile_batch = 0: must be at least 1".into());
        }
        if self.share.path.as_os_str().is_empty() {
            p.push("share.path is empty: give the folder lab staff drop exports into".into());
        }
        if self.state.path.as_os_str().is_empty() {
            p.push("state.path is empty: give a folder on local storage for the database".into());
        }
        for m in &self.cases.require {
            if !["ct", "slide", "clinical"].contains(&m.as_str()) {
                p.push(format!("cases.require contains `{m}`: allowed values are \"ct\", \"slide\", \"clinical\""));
            }
        }
        if !(0.0..=10.0).contains(&self.series.max_slice_thickness_mm) || self.series.max_slice_thickness_mm == 0.0 {
            p.push(format!(
                "series.max_slice_thickness_mm = {}: must be greater than 0 and at most 10",
                self.series.max_slice_thickness_mm
            ));
        }
        if !(0.0..=45.0).contains(&self.series.axial_tolerance_degrees) {
            p.push(format!("series.axial_tolerance_degrees = {}: must be 0-45", self.series.axial_tolerance_degrees));
        }
        let e = &self.eligibility;
        if !(e.min_age >= 0.0 && e.min_age <= e.max_age && e.max_age <= 120.0) {
            p.push(format!(
                "eligibility.min_age = {} / max_age = {}: need 0 <= min_age <= max_age <= 120",
                e.min_age, e.max_age
            ));
        }
        if !["R0", "R1", "R2"].contains(&e.required_resection.as_str()) {
            p.push(format!(
                "eligibility.required_resection = \"{}\": allowed values are \"R0\", \"R1\", \"R2\"",
                e.required_resection
            ));
        }
        if e.max_ct_before_surgery_days < 0 {
            p.push("eligibility.max_ct_before_surgery_days must be 0 or more".into());
        }
        let d = &self.display;
        if !["png", "framebuffer", "spi", "none"].contains(&d.driver.as_str()) {
            p.push(format!(
                "display.driver = \"{}\": allowed values are \"png\", \"framebuffer\", \"spi\", \"none\"",
                d.driver
            ));
        }
        if let Err(e) = parse_size(&d.size) {
            p.push(format!("display.size: {e}"));
        }
        if !["rgb565", "xrgb8888", "xbgr8888"].contains(&d.pixel_format.as_str()) {
            p.push(format!(
                "display.pixel_format = \"{}\": allowed values are \"rgb565\", \"xrgb8888\", \"xbgr8888\"",
                d.pixel_format
            ));
        }
        if !(d.problem_seconds.is_finite() && d.problem_seconds >= 0.0) {
            p.push(format!("display.problem_seconds = {}: must be 0 or more", d.problem_seconds));
        }
        if !["auto", "journal", "stderr"].contains(&self.log.target.as_str()) {
            p.push(format!(
                "log.target = \"{}\": allowed values are \"auto\", \"journal\", \"stderr\"",
                self.log.target
            ));
        }
        if tracing_subscriber_filter_ok(&self.log.level).is_err() {
            p.push(format!("log.level = \"{}\": use error, warn, info, debug or trace", self.log.level));
        }
        let m = &self.mqtt;
        if let Err(e) = m.endpoint() {
            p.push(format!("mqtt.url: {e}"));
        }
        if m.client_cert_file.as_os_str().is_empty() != m.client_key_file.as_os_str().is_empty() {
            p.push("mqtt.client_cert_file and mqtt.client_key_file: set both (mutual TLS) or neither".into());
        }
        for (key, f) in [
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.client_cert_file", &m.client_cert_file),
            ("mqtt.client_key_file", &m.client_key_file),
        ] {
            if f.as_os_str().is_empty() {
                continue;
            }
            if !m.tls() {
                p.push(format!("{key} is set but mqtt.url is not mqtts://: the file would not be used"));
            } else if !f.is_file() {
                p.push(format!("{key} = \"{}\": no such file", f.display()));
            }
        }
        if !m.collector_key.as_os_str().is_empty() && !m.collector_key.is_file() {
            p.push(format!("mqtt.collector_key = \"{}\": no such file", m.collector_key.display()));
        }
        for (key, v) in [("mqtt.site", &m.site), ("mqtt.device", &m.device)] {
            if v.is_empty() || v.contains(['/', '+', '#']) || v.len() > 64 {
                p.push(format!("{key} = \"{v}\": 1-64 characters without '/', '+' or '#' (it is a topic segment)"));
            }
        }
        if !(m.heartbeat_seconds.is_finite() && m.heartbeat_seconds >= 1.0) {
            p.push(format!("mqtt.heartbeat_seconds = {}: must be 1 or more", m.heartbeat_seconds));
        }
        if !(m.reconnect_min_seconds > 0.0 && m.reconnect_min_seconds <= m.reconnect_max_seconds) {
            p.push("mqtt.reconnect_min_seconds must be > 0 and <= mqtt.reconnect_max_seconds".into());
        }
        if p.is_empty() { Ok(()) } else { Err(ConfigError { problems: p }) }
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        if self.quarantine.path.as_os_str().is_empty() {
            self.state.path.join("quarantine")
        } else {
            self.quarantine.path.clone()
        }
    }

    /// Where the PNG display writes (display.path, or <state>/display.png).
    pub fn display_path(&self) -> PathBuf {
        if !self.display.path.as_os_str().is_empty() {
            return self.display.path.clone();
        }
        match self.display.driver.as_str() {
            "framebuffer" => "/dev/fb0".into(),
            "spi" => "/dev/spidev0.0".into(),
            _ => self.state.path.join("display.png"),
        }
    }

    pub fn outbox_dir(&self) -> PathBuf {
        if self.outputs.dir.as_os_str().is_empty() { self.state.path.join("outbox") } else { self.outputs.dir.clone() }
    }

    pub fn ledger_dir(&self) -> PathBuf {
        self.state.path.join("ledger")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.state.path.join("keys")
    }

    pub fn database_path(&self) -> PathBuf {
        self.state.path.join("crlm.sqlite")
    }
}

/// Parse `WIDTHxHEIGHT` (e.g. `480x320`).
pub fn parse_size(s: &str) -> Result<embedded_graphics::prelude::Size, ConfigError> {
    let bad = || ConfigError::one(format!("size `{s}`: expected WIDTHxHEIGHT such as 480x320, 800x480 or 1024x600"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if !(160..=4096).contains(&w) || !(120..=4096).contains(&h) {
        return Err(bad());
    }
    Ok(embedded_graphics::prelude::Size::new(w, h))
}

fn tracing_subscriber_filter_ok(level: &str) -> Result<(), ()> {
    let base = level.split(',').next().unwrap_or("").trim();
    if ["error", "warn", "info", "debug", "trace", "off"].contains(&base) || base.contains('=') {
        Ok(())
    } else {
        Err(())
    }
}

/// Environment values are TOML literals when they parse as one (numbers, booleans, arrays),
/// else plain strings (paths).
fn env_value(v: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    }
}

/// Keys present in `tree` that the default configuration does not have.
fn unknown_keys(tree: &toml::Table) -> Vec<String> {
    let known = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut out = Vec::new();
    for (section, value) in tree {
        let Some(known_section) = known.get(section).and_then(|v| v.as_table()) else {
            out.push(format!(
                "unknown section [{section}]; sections are: {}",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        let Some(t) = value.as_table() else {
            out.push(format!("`{section}` must be a section ([{section}]), not a value"));
            continue;
        };
        for key in t.keys() {
            if !known_section.contains_key(key) {
                out.push(format!(
                    "unknown key {section}.{key}; keys of [{section}] are: {}",
                    known_section.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_default_file_equals_the_built_in_defaults() {
        let parsed = Config::from_sources(DEFAULT_TOML, &[], None).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            ("CRLM_SHARE__QUIET_SECONDS".to_string(), "2".to_string()),
            ("CRLM_STATE__PATH".to_string(), "/var/lib/crlm".to_string()),
            ("CRLM_SHARE__INOTIFY".to_string(), "false".to_string()),
        ];
        let c = Config::from_sources("[share]\nquiet_seconds = 30\n", &env, None).unwrap();
        assert_eq!(c.share.quiet_seconds, 2.0);
        assert_eq!(c.state.path, PathBuf::from("/var/lib/crlm"));
        assert!(!c.share.inotify);
    }

    #[test]
    fn every_unknown_key_is_named_with_the_allowed_ones() {
        let err = Config::from_sources("[share]\nquite_seconds = 3\n[sahre]\npath='x'\n", &[], None).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems.iter().any(|p| p.contains("unknown key share.quite_seconds") && p.contains("quiet_seconds"))
        );
        assert!(err.problems.iter().any(|p| p.contains("unknown section [sahre]")));
    }

    #[test]
    fn every_bad_value_is_named() {
        let t = "[share]\nquiet_seconds = 0\n[eligibility]\nrequired_resection = \"R3\"\n[log]\ntarget = \"syslog\"\n";
        let err = Config::from_sources(t, &[], None).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.to_string().contains("share.quiet_seconds = 0"));
        assert!(err.to_string().contains("\"R0\", \"R1\", \"R2\""));
    }

    #[test]
    fn tls_files_are_checked() {
        // A certificate without its key, a missing CA, and TLS files for a plain mqtt:// URL.
        let t = "[mqtt]\nurl = \"mqtts://broker:8883\"\nca_file = \"/no/such/ca.pem\"\nclient_cert_file = \"/no/such/box.pem\"\n";
        let err = Config::from_sources(t, &[], None).unwrap_err().to_string();
        assert!(err.contains("set both (mutual TLS) or neither"), "{err}");
        assert!(err.contains("mqtt.ca_file = \"/no/such/ca.pem\": no such file"), "{err}");
        let t = "[mqtt]\nurl = \"mqtt://broker:1883\"\nca_file = \"/etc/hosts\"\n";
        let err = Config::from_sources(t, &[], None).unwrap_err().to_string();
        assert!(err.contains("mqtt.ca_file is set but mqtt.url is not mqtts://"), "{err}");
        let c = Config::from_sources("[mqtt]\nurl = \"mqtts://broker\"\n", &[], None).unwrap();
        assert_eq!(c.mqtt.endpoint().unwrap(), ("broker".to_string(), 8883));
    }

    #[test]
    fn mqtt_protocol_is_3_1_1_or_5_and_5_needs_an_external_broker() {
        let c = Config::from_sources("[mqtt]\nurl = \"mqtt://b:1883\"\nprotocol = \"5\"\n", &[], None).unwrap();
        assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
        let env = [
            ("CRLM_MQTT__PROTOCOL".to_string(), "5".to_string()),
            ("CRLM_MQTT__URL".to_string(), "mqtt://b".to_string()),
        ];
        assert_eq!(Config::from_sources("", &env, None).unwrap().mqtt.protocol, MqttProtocol::V5);
        let env = [("CRLM_MQTT__PROTOCOL".to_string(), "3.1.1".to_string())];
        assert_eq!(Config::from_sources("", &env, None).unwrap().mqtt.protocol, MqttProtocol::V311);
        let err = Config::from_sources("[mqtt]\nprotocol = \"5\"\n", &[], None).unwrap_err().to_string();
        assert!(err.contains("needs an external broker"), "{err}");
        let err = Config::from_sources("[mqtt]\nprotocol = \"3\"\n", &[], None).unwrap_err().to_string();
        assert!(err.contains("protocol") && err.contains("3.1.1"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::from_sources("[share]\npoll_seconds = \"fast\"\n", &[], None).unwrap_err();
        assert!(err.to_string().contains("poll_seconds"), "{err}");
    }
}
