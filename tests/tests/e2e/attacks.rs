//! Issue 21's attacks on the fleet messages, against both brokers (Debian's mosquitto and crlm's
//! embedded rumqttd), each from an anonymous client the broker lets in: forged results (a zeroed
//! record signature, no record and no signature, an unregistered device) and forged acks (the
//! unsigned `through_seq: 1000`, and one signed by a key that is not the collector's). None may
//! change what the collector stores or what the box keeps.

use crlm_e2e::{
    BrokerKind, Collector, Site, Subscriber, collected, free_port, have, outbox_rows, publish_anonymously, rejected,
    signal, start_broker, stop, wait,
};
use crlm_models::synth::{SampleCase, write_sample_case};
use crlm_mqtt::auth::{self, Party};
use serde_json::json;
use std::time::Duration;

fn forged_messages_change_nothing(kind: BrokerKind) {
    let mut site = Site::new(0.3);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__RECONNECT_MAX_SECONDS".into(), "1".into()));
    let broker = start_broker(kind, port, site.dir.path());
    let central = site.dir.path().join("central");
    std::fs::create_dir_all(&central).unwrap();
    let collector = Collector::start(&central, &url);
    collector.trusted_by(&mut site);
    let db = collector.db.clone();
    let subscriber = Subscriber::start(port);
    let mut service = site.start(0);
    collector.register(&site.state);
    write_sample_case(&site.share.join("case-0"), &SampleCase::new("ATTACK-000")).unwrap();
    wait("the first result at the collector", Duration::from_secs(60), || collected(&db).len() == 1);
    wait("the outbox emptied by the ack", Duration::from_secs(30), || outbox_rows(&site.state) == 0);
    let genuine = subscriber.leaf("result").first().cloned().expect("the genuine result");
    // (The box's status and heartbeats from before it was registered were rejected already.)
    let rejected_before = rejected(&db).len();

    // Forged results numbered 1, the box's next number, before its genuine result 1 exists.
    let topic = "crlm/v1/site01/box01/result";
    let mut zeroed = genuine.clone();
    zeroed["seq"] = 1.into();
    zeroed["record"]["sig"] = "0".repeat(128).into();
    let mut bare = genuine.clone();
    bare["seq"] = 1.into();
    for k in ["record", "auth"] {
        bare.as_object_mut().unwrap().remove(k);
    }
    let mut unknown = genuine.clone();
    unknown["device"] = "box99".into();
    let forger = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let unknown_topic = "crlm/v1/site01/box99/result";
    let unknown = auth::seal(Party::Box, unknown_topic, &serde_json::to_vec(&unknown).unwrap(), &forger).unwrap();
    publish_anonymously(port, topic, &serde_json::to_vec(&zeroed).unwrap());
    publish_anonymously(port, topic, &serde_json::to_vec(&bare).unwrap());
    publish_anonymously(port, unknown_topic, &unknown);
    wait("the collector to reject the 3 forgeries", Duration::from_secs(20), || {
        rejected(&db).len() >= rejected_before + 3
    });
    let reasons = rejected(&db).split_off(rejected_before);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("box01") || r.contains("signature")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("unsigned")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("site01/box99 is not registered")), "{reasons:?}");
    assert_eq!(collected(&db).len(), 1, "nothing forged is stored");
    // The collector acks the box's genuine messages (result 0, alerts) whenever they arrive, so the
    // property is exact rather than a count: no result ack ever reaches past result 0 while only
    // forgeries hold number 1.
    std::thread::sleep(Duration::from_secs(1));
    let past_0 = |s: &Subscriber| {
        s.leaf("ack")
            .into_iter()
            .filter(|a| a["stream"] == "result" && a["through_seq"].as_i64().is_some_and(|n| n >= 1))
            .collect::<Vec<_>>()
    };
    assert_eq!(past_0(&subscriber), Vec::<serde_json::Value>::new(), "nothing forged is acknowledged");
    // The genuine result 1 then takes its number.
    write_sample_case(&site.share.join("case-1"), &SampleCase::new("ATTACK-001")).unwrap();
    wait("the genuine second result", Duration::from_secs(60), || collected(&db).len() == 2);
    let rows = collected(&db);
    assert!(rows.iter().all(|r| r["signature_ok"] == true), "{rows:#?}");
    assert_ne!(rows[0]["pseudonym"], rows[1]["pseudonym"], "{rows:#?}");

    // Forged acks while the collector is away and a result waits in the outbox.
    drop(collector);
    write_sample_case(&site.share.join("case-2"), &SampleCase::new("ATTACK-002")).unwrap();
    site.wait_cases(Duration::from_secs(120), |c| c.len() == 3 && c.iter().all(|x| x["state"] == "predicted"));
    wait("the third result in the outbox", Duration::from_secs(10), || outbox_rows(&site.state) == 1);
    let ack_topic = "crlm/v1/site01/box01/ack";
    let forged = json!({"version": 1, "stream": "result", "through_seq": 1000, "countersignature": null});
    publish_anonymously(port, ack_topic, &serde_json::to_vec(&forged).unwrap());
    let mut signed = forged.clone();
    signed["through_sha256"] = "0".repeat(64).into();
    let signed = auth::seal(Party::Collector, ack_topic, &serde_json::to_vec(&signed).unwrap(), &forger).unwrap();
    publish_anonymously(port, ack_topic, &signed);
    wait("the box to refuse both acks", Duration::from_secs(20), || {
        site.log(0).matches("an ack that does not verify was ignored").count() >= 2
    });
    assert_eq!(outbox_rows(&site.state), 1, "a forged ack removed an unsent result");
    // The collector back: the result arrives and its genuine ack empties the outbox.
    let collector = Collector::start(&central, &url);
    wait("the third result at the collector", Duration::from_secs(90), || collected(&db).len() == 3);
    wait("the outbox emptied by the genuine ack", Duration::from_secs(30), || outbox_rows(&site.state) == 0);
    let log = site.log(0);
    assert!(
        log.contains("without credentials or a client certificate"),
        "no warning about the anonymous broker: {log}"
    );
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
    drop(collector);
    stop(broker);
}

#[test]
fn forged_results_and_acks_change_nothing_with_the_embedded_broker() {
    forged_messages_change_nothing(BrokerKind::Embedded);
}

#[test]
fn forged_results_and_acks_change_nothing_with_mosquitto() {
    if !have("mosquitto") {
        eprintln!("SKIPPED: mosquitto (Debian package) is not installed");
        return;
    }
    forged_messages_change_nothing(BrokerKind::Mosquitto);
}
