//! The embedded broker (rumqttd) for the default configuration: the box runs with nothing else
//! installed. It listens on loopback only; a configured external broker replaces it.

use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "the embedded MQTT broker cannot listen on {addr}: {source} (set mqtt.embedded_port, or mqtt.url for an external broker)"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the embedded MQTT broker failed to start: {0}")]
    Start(String),
}

/// Start rumqttd on `addr` (MQTT 3.1.1 and 5 on consecutive ports is not needed: v4 only) on its
/// own threads. Returns once the port is known to be free; the broker runs until the process ends.
pub fn start(addr: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd binds inside its own thread and only logs a failure: check the port first.
    std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 200,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "crlm-embedded-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("crlm-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(stage = "mqtt", error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| BrokerError::Start(e.to_string()))?;
    // Wait until it accepts connections (it binds on its own thread).
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(BrokerError::Start(format!("nothing listens on {addr} after 2 s")))
}
