//! Configuration: one TOML file, every key with a laptop-friendly default, overridable from the
//! environment as `CRLM_<SECTION>__<KEY>`. Loading is two-phase: the file and environment are
//! merged into a TOML tree and checked against the known keys (all unknown keys reported at
//! once), then deserialised and validated (all bad values reported at once, each naming its key
//! and the allowed values). The annotated default file is [`DEFAULT_TOML`]; a test keeps it equal
//! to [`Config::default`].

use crlm_models::limits::Limits;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The annotated default configuration (`crlm config default`).
pub const DEFAULT_TOML: &str = include_str!("../crlm.default.toml");

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    /// "png", "framebuffer", "spi" or "none".
    pub driver: String,
    /// png: the file (empty: <state>/display.png); framebuffer: the device (/dev/fb0);
    /// spi: the spidev device (/dev/spidev0.0).
    pub path: PathBuf,
    /// WIDTHxHEIGHT; for a framebuffer, used only when the device cannot report its geometry.
    pub size: String,
    /// "blinded" (the study default: no risk or group is ever shown) or "open".
    pub mode: crate::panel::state::ResultMode,
    /// File-backed framebuffers only: "rgb565", "xrgb8888" or "xbgr8888".
    pub pixel_format: String,
    /// The name shown on the status screen.
    pub device_name: String,
    /// How long a problem stays on screen after it happened.
    pub problem_seconds: f64,
    /// SPI panels: the GPIO character device and the data/command and reset lines.
    pub gpio_chip: PathBuf,
    pub spi_dc_line: u32,
    pub spi_reset_line: u32,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig {
            driver: "png".into(),
            path: PathBuf::new(),
            size: "480x320".into(),
            mode: crate::panel::state::ResultMode::Blinded,
            pixel_format: "rgb565".into(),
            device_name: "crlm-edge".into(),
            problem_seconds: 60.0,
            gpio_chip: "/dev/gpiochip0".into(),
            spi_dc_line: 24,
            spi_reset_line: 25,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShareConfig {
    pub path: PathBuf,
    pub quiet_seconds: f64,
    pub poll_seconds: f64,
    pub inotify: bool,
    pub incomplete_timeout_seconds: f64,
}

impl Default for ShareConfig {
    fn default() -> Self {
        ShareConfig {
            path: "./share".into(),
            quiet_seconds: 10.0,
            poll_seconds: 2.0,
            inotify: true,
            incomplete_timeout_seconds: 600.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub path: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { path: "./state".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CasesConfig {
    pub partial_after_seconds: f64,
    pub require: Vec<String>,
}

impl Default for CasesConfig {
    fn default() -> Self {
        CasesConfig { partial_after_seconds: 3600.0, require: vec!["ct".into(), "slide".into(), "clinical".into()] }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesConfig {
    pub max_slice_thickness_mm: f64,
    pub require_contrast: bool,
    pub require_original_primary: bool,
    pub axial_tolerance_degrees: f64,
    pub min_slices: u32,
    pub preferred_description: Vec<String>,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        SeriesConfig {
            max_slice_thickness_mm: 5.0,
            require_contrast: true,
            require_original_primary: true,
            axial_tolerance_degrees: 10.0,
            min_slices: 8,
            preferred_description: vec!["portal".into(), "venous".into(), "pv".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EligibilityConfig {
    pub enabled: bool,
    pub min_age: f64,
    pub max_age: f64,
    pub required_resection: String,
    pub max_ct_before_surgery_days: i64,
}

impl Default for EligibilityConfig {
    fn default() -> Self {
        EligibilityConfig {
            enabled: true,
            min_age: 18.0,
            max_age: 75.0,
            required_resection: "R0".into(),
            max_ct_before_surgery_days: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QuarantineMode {
    /// Leave the file in the share; write the reason file only.
    #[default]
    Record,
    /// Move the file out of the share into the quarantine folder, beside its reason file.
    Move,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    pub mode: QuarantineMode,
    /// Empty: `<state.path>/quarantine`.
    pub path: PathBuf,
}

/// Which model package runs, and who may sign one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A package folder or `.tar`; empty: the built-in demo package.
    pub path: PathBuf,
    /// Public key files (hex) trusted to sign packages.
    pub trusted_keys: Vec<PathBuf>,
    /// Threads for reading slide tiles; 0: every core.
    pub threads: usize,
    /// Where the network runs: `candle` (pure Rust, CPU) or `onnx` (ONNX Runtime; `[onnx]`).
    pub backend: crlm_models::backend::BackendKind,
}

/// The prediction ledger (docs/LEDGER.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Public key files (hex) of central collectors whose countersignatures of the chain head
    /// `crlm ledger verify` accepts as a second party's proof of the lock time.
    pub collector_keys: Vec<PathBuf>,
}

/// Result files written per case into the outbox (docs/OUTPUTS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// Empty: `<state.path>/outbox`.
    pub dir: PathBuf,
    pub result_json: bool,
    pub fhir: bool,
    pub dicom_sr: bool,
    /// Keep the patient's name, ID, birth date and the study's UIDs in the DICOM SR, so the
    /// local PACS files it with the CT study. The SR stays on site; turn off if it leaves.
    pub sr_identifiers: bool,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig { dir: PathBuf::new(), result_json: true, fhir: true, dicom_sr: true, sr_identifiers: true }
    }
}

/// De-identification of everything that may leave the box (docs/PRIVACY.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Keep DICOM UIDs (study, series, instances) in the ledger, result.json and FHIR instead of
    /// replacing them with keyed hashes. PS3.15 Annex E removes UIDs unless a study keeps them.
    pub keep_uids: bool,
}

/// Fleet reporting over MQTT (docs/MQTT.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub enabled: bool,
    /// `mqtt://host:port`; empty: an embedded broker on 127.0.0.1:`embedded_port`.
    pub url: String,
    pub embedded_port: u16,
    /// Topic segments: `crlm/v1/<site>/<device>/...`.
    pub site: String,
    pub device: String,
    pub heartbeat_seconds: f64,
    pub username: String,
    pub password: String,
    /// Send `risk_2y` and the signed ledger record with each result (the study office needs them
    /// for the validation); false sends the group, hashes and lock only.
    pub send_risk: bool,
    /// The on-disk outbox's size at which an alert is raised (results are never dropped).
    pub outbox_max_bytes: u64,
    /// Reconnect back-off: first and largest delay (seconds), with jitter.
    pub reconnect_min_seconds: f64,
    pub reconnect_max_seconds: f64,
    /// `mqtts://` only: the CA that signed the broker's certificate (PEM); empty: the system's roots.
    pub ca_file: PathBuf,
    /// `mqtts://` only: this box's certificate and key (PEM) for mutual TLS; both or neither.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    /// The box's MQTT protocol: "3.1.1" or "5".
    pub protocol: MqttProtocol,
}

/// MQTT 3.1.1 (protocol level 4) or MQTT 5. Written "3.1.1" or "5" (4 and 5 as numbers too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MqttProtocol {
    #[default]
    V311,
    V5,
}

impl MqttProtocol {
    pub fn name(self) -> &'static str {
        match self {
            MqttProtocol::V311 => "3.1.1",
            MqttProtocol::V5 => "5",
        }
    }
}

impl Serialize for MqttProtocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for MqttProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) if t == "3.1.1" || t == "4" => Ok(MqttProtocol::V311),
            Raw::Number(4) => Ok(MqttProtocol::V311),
            Raw::Text(t) if t == "5" || t == "5.0" => Ok(MqttProtocol::V5),
            Raw::Number(5) => Ok(MqttProtocol::V5),
            _ => Err(serde::de::Error::custom("expected \"3.1.1\" or \"5\"")),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: true,
            url: String::new(),
            embedded_port: 18830,
            site: "site01".into(),
            device: "box01".into(),
            heartbeat_seconds: 30.0,
            username: String::new(),
            password: String::new(),
            send_risk: true,
            outbox_max_bytes: 64 << 20,
            reconnect_min_seconds: 0.5,
            reconnect_max_seconds: 60.0,
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            protocol: MqttProtocol::V311,
        }
    }
}

impl MqttConfig {
    /// Does the configured broker URL ask for TLS (`mqtts://`)?
    pub fn tls(&self) -> bool {
        self.url.starts_with("mqtts://") || self.url.starts_with("ssl://")
    }

    /// Host and port of the broker to use (the embedded one when `url` is empty).
    pub fn endpoint(&self) -> Result<(String, u16), String> {
        if self.url.is_empty() {
            return Ok(("127.0.0.1".into(), self.embedded_port));
        }
        let (rest, default_port) = match self.url.split_once("://") {
            Some(("mqtt", rest)) | Some(("tcp", rest)) => (rest, 1883),
            Some(("mqtts", rest)) | Some(("ssl", rest)) => (rest, 8883),
            _ => return Err(format!("`{}`: expected mqtt://host:port or mqtts://host:port", self.url)),
        };
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("`{}`: bad port", self.url))?),
            None => (rest.trim_end_matches('/'), default_port),
        };
        if host.is_empty() {
            return Err(format!("`{}`: no host", self.url));
        }
        Ok((host.to_string(), port))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub target: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), target: "auto".into() }
    }
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
