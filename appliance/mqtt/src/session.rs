//! The one MQTT session every crlm client uses (the box's publisher, the study office's
//! collector, `crlm fleet watch` and the demo's tap), over MQTT 3.1.1 or MQTT 5
//! (`mqtt.protocol`). rumqttc has a separate client for each protocol with its own types; this
//! hides which one runs behind the few operations the clients need. Both get the same TLS,
//! credentials, keep-alive, session, packet-size limit and (for the box) retained Last Will; and
//! one reconnect back-off ([`Backoff`]), since rumqttc has none.

use crlm_config::{MqttConfig, MqttProtocol};
use std::time::Duration;

/// What the event loop reports.
pub enum Polled {
    /// CONNACK: connected (again).
    Up,
    Message(String, Vec<u8>),
    /// Anything else (PUBACK, SUBACK, pings, outgoing packets).
    Other,
    /// The connection failed or dropped, with the reason.
    Lost(String),
}

pub struct Settings {
    pub client_id: String,
    pub keep_alive: Duration,
    pub max_packet_bytes: usize,
    /// A retained Last Will: (topic, payload).
    pub will: Option<(String, String)>,
    /// Keep the session (and the QoS 1 messages the broker holds for it) across disconnects:
    /// the collector's persistent session.
    pub persistent: bool,
}

/// Capped exponential reconnect back-off with jitter (0.5 to 1 times the step).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: f64,
    max: f64,
    next: f64,
}

impl Backoff {
    pub fn new(min_seconds: f64, max_seconds: f64) -> Backoff {
        let min = min_seconds.max(0.01);
        Backoff { min, max: max_seconds.max(min), next: min }
    }

    /// Connected: start again from the minimum.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// How long to wait before the next attempt.
    pub fn step(&mut self) -> Duration {
        let jitter = rand::Rng::random_range(&mut rand::rng(), 0.5..1.0);
        let wait = self.next * jitter;
        self.next = (self.next * 2.0).min(self.max);
        Duration::from_secs_f64(wait)
    }
}

pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Boxed: the two event loops differ in size by hundreds of bytes, and there is one per process.
pub enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A client and its event loop for the configured broker and protocol (nothing is sent until the
/// event loop is polled).
pub fn connect(m: &MqttConfig, s: Settings) -> Result<(Client, Events), String> {
    let (host, port) = m.endpoint()?;
    let transport = super::transport(m)?;
    match m.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(s.client_id, host, port);
            if let Some(t) = transport {
                o.set_transport(t);
            }
            if !m.username.is_empty() {
                o.set_credentials(m.username.clone(), m.password.clone());
            }
            o.set_keep_alive(s.keep_alive);
            o.set_clean_session(!s.persistent);
            o.set_max_packet_size(s.max_packet_bytes, s.max_packet_bytes);
            if let Some((topic, payload)) = s.will {
                o.set_last_will(rumqttc::LastWill::new(topic, payload, rumqttc::QoS::AtLeastOnce, true));
            }
            let (c, e) = rumqttc::AsyncClient::new(o, 64);
            Ok((Client::V4(c), Events::V4(Box::new(e))))
        }
        MqttProtocol::V5 => {
            use rumqttc::v5::mqttbytes::{QoS, v5::LastWill};
            let mut o = rumqttc::v5::MqttOptions::new(s.client_id, host, port);
            if let Some(t) = transport {
                o.set_transport(t);
            }
            if !m.username.is_empty() {
                o.set_credentials(m.username.clone(), m.password.clone());
            }
            o.set_keep_alive(s.keep_alive);
            o.set_clean_start(!s.persistent);
            if s.persistent {
                // MQTT 5 keeps a session only for as long as the client asks.
                o.set_session_expiry_interval(Some(u32::MAX));
            }
            o.set_max_packet_size(Some(s.max_packet_bytes as u32));
            if let Some((topic, payload)) = s.will {
                o.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true, None));
            }
            let (c, e) = rumqttc::v5::AsyncClient::new(o, 64);
            Ok((Client::V5(c), Events::V5(Box::new(e))))
        }
    }
}

impl Events {
    pub async fn poll(&mut self) -> Polled {
        match self {
            Events::V4(e) => {
                use rumqttc::{Event, Packet};
                match e.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Polled::Up,
                    Ok(Event::Incoming(Packet::Publish(p))) => Polled::Message(p.topic.clone(), p.payload.to_vec()),
                    Ok(_) => Polled::Other,
                    Err(e) => Polled::Lost(e.to_string()),
                }
            }
            Events::V5(e) => {
                use rumqttc::v5::Event;
                use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
                match e.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Success => Polled::Up,
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        Polled::Lost(format!("connection refused: {:?}", a.code))
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Polled::Message(String::from_utf8_lossy(&p.topic).into_owned(), p.payload.to_vec())
                    }
                    Ok(_) => Polled::Other,
                    Err(e) => Polled::Lost(e.to_string()),
                }
            }
        }
    }
}

impl Client {
    /// Publish; `reliable` is QoS 1, else QoS 0.
    pub async fn publish(&self, topic: String, reliable: bool, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let q = if reliable { rumqttc::QoS::AtLeastOnce } else { rumqttc::QoS::AtMostOnce };
                c.publish(topic, q, retain, payload).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS;
                let q = if reliable { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                c.publish(topic, q, retain, payload).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Publish at QoS 0 without waiting for room in the request queue (heartbeats).
    pub fn try_publish_unreliable(&self, topic: String, payload: Vec<u8>) {
        self.try_publish(topic, false, payload);
    }

    /// Publish without waiting for room in the request queue (`reliable`: QoS 1, else QoS 0);
    /// a full queue drops the message, which the caller must be able to afford.
    pub fn try_publish(&self, topic: String, reliable: bool, payload: Vec<u8>) {
        match self {
            Client::V4(c) => {
                let q = if reliable { rumqttc::QoS::AtLeastOnce } else { rumqttc::QoS::AtMostOnce };
                let _ = c.try_publish(topic, q, false, payload);
            }
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS;
                let q = if reliable { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                let _ = c.try_publish(topic, q, false, payload);
            }
        }
    }

    /// Subscribe at QoS 1.
    pub async fn subscribe(&self, topic: String) -> Result<(), String> {
        match self {
            Client::V4(c) => c.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
            Client::V5(c) => {
                c.subscribe(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await.map_err(|e| e.to_string())
            }
        }
    }

    pub async fn disconnect(&self) {
        match self {
            Client::V4(c) => {
                let _ = c.disconnect().await;
            }
            Client::V5(c) => {
                let _ = c.disconnect().await;
            }
        }
    }
}
