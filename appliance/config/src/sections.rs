//! The configuration's sections, one typed struct per `[section]` of the TOML file, each with the
//! defaults documented in `crlm.default.toml`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Result display mode on the front panel (`display.mode`). `blinded` (the study default) never shows a risk or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResultMode {
    Open,
    #[default]
    Blinded,
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
    pub mode: ResultMode,
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
            mode: ResultMode::Blinded,
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
    /// Below this much free space on the state disk the box reports DISK FULL (heartbeat,
    /// panel, alert) before SQLite and the ledger run out.
    pub min_free_mb: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { path: "./state".into(), min_free_mb: 256 }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The study horizon in months: `risk_2y` is the risk by then, from exactly the package's
    /// intervals up to it (a package with no interval ending there is refused).
    pub horizon_months: u32,
    /// The tile-embedding cache (`<state>/embeddings`), in MiB; 0: off.
    pub embedding_cache_mib: u64,
    /// The longest one case may take in the prediction worker (files, CT, slide, model, lock).
    /// Past it the worker is taken to be stuck (a decoder or the runtime hung on one input):
    /// the service exits with an error so systemd restarts it, the cut-off start is counted,
    /// and a case cut off 5 times is failed with the reason.
    pub case_timeout_seconds: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::new(),
            trusted_keys: Vec::new(),
            threads: 0,
            backend: crlm_models::backend::BackendKind::default(),
            horizon_months: crlm_models::package::spec::DEFAULT_HORIZON_MONTHS,
            embedding_cache_mib: 2048,
            case_timeout_seconds: 3600.0,
        }
    }
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
    /// The study office collector's public key (`collector.pub`). The box acts only on acks
    /// signed with it (or with one of `ledger.collector_keys`); with neither set, acks are
    /// ignored and every result stays in the outbox.
    pub collector_key: PathBuf,
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
            collector_key: PathBuf::new(),
        }
    }
}

impl MqttConfig {
    /// The collector keys whose signed acks the box acts on: `collector_key` and the ledger's
    /// `collector_keys` (older keys stay valid while a collector's key is rotated).
    pub fn ack_keys<'a>(&'a self, ledger: &'a LedgerConfig) -> impl Iterator<Item = &'a std::path::Path> {
        std::iter::once(self.collector_key.as_path())
            .filter(|p| !p.as_os_str().is_empty())
            .chain(ledger.collector_keys.iter().map(PathBuf::as_path))
    }

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
