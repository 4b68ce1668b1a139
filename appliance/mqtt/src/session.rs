//! The box's broker connection over MQTT 3.1.1 or MQTT 5 (`mqtt.protocol`). rumqttc has a
//! separate client for each protocol with its own types; this hides which one runs behind the
//! few operations the publisher needs. Both get the same TLS, credentials, keep-alive, clean
//! session, packet-size limit and retained Last Will.

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
    pub will_topic: String,
    pub will_payload: String,
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
            o.set_clean_session(true);
            o.set_max_packet_size(s.max_packet_bytes, s.max_packet_bytes);
            o.set_last_will(rumqttc::LastWill::new(s.will_topic, s.will_payload, rumqttc::QoS::AtLeastOnce, true));
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
            o.set_clean_start(true);
            o.set_max_packet_size(Some(s.max_packet_bytes as u32));
            o.set_last_will(LastWill::new(s.will_topic, s.will_payload, QoS::AtLeastOnce, true, None));
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
        match self {
            Client::V4(c) => {
                let _ = c.try_publish(topic, rumqttc::QoS::AtMostOnce, false, payload);
            }
            Client::V5(c) => {
                let _ = c.try_publish(topic, rumqttc::v5::mqttbytes::QoS::AtMostOnce, false, payload);
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
