//! The MQTT payload types (crlm_mqtt::payload) against the published JSON Schemas in
//! docs/schemas/mqtt: every payload the builders make validates, and the fields a type can carry
//! are exactly the properties its schema lists (so neither can drift from the other).

use crlm_ledger::{CaseRecord, Ledger, RecordBody, countersign};
use crlm_mqtt::auth::{self, Party};
use crlm_mqtt::{
    Ack, AlertCode, Condition, ConditionCode, HeartbeatPayload, LinkState, Message, OutboxState, PAYLOAD_VERSION,
    Stream, alert_payload, result_payload, status_payload,
};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn schema(leaf: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/mqtt");
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{leaf}.schema.json"))).unwrap()).unwrap()
}

/// Signed as it is sent (the box's key; acks the collector's), validates against the schema, and
/// (when `all_fields`) carries exactly its properties.
fn check(leaf: &str, payload: &Value, all_fields: bool) {
    let (party, key) = match leaf {
        "ack" => (Party::Collector, ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])),
        _ => (Party::Box, ed25519_dalek::SigningKey::from_bytes(&[1u8; 32])),
    };
    let topic = format!("crlm/v1/site-1/box-1/{leaf}");
    let sealed = auth::seal(party, &topic, &serde_json::to_vec(payload).unwrap(), &key).unwrap();
    let payload: &Value = &serde_json::from_slice(&sealed).unwrap();
    let s = schema(leaf);
    let validator = jsonschema::options().should_validate_formats(true).build(&s).unwrap();
    let errors: Vec<String> = validator.iter_errors(payload).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{leaf}: {errors:?}\n{payload:#}");
    if all_fields {
        let props: BTreeSet<&str> = s["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        let keys: BTreeSet<&str> = payload.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, props, "{leaf}: the type's fields and the schema's properties differ");
    }
}

fn with_seq(m: Message, seq: i64) -> Value {
    let mut v = serde_json::to_value(&m).unwrap();
    v["seq"] = seq.into();
    // The outbox stamps `seq` the same way; the typed payload must read it back.
    assert_eq!(
        serde_json::from_value::<Message>(v.clone()).map(|m| serde_json::to_value(m).unwrap()).ok(),
        Some(v.clone())
    );
    v
}

#[test]
fn every_payload_type_matches_its_published_schema() {
    let d = tempfile::tempdir().unwrap();
    let key = crlm_ledger::device_key(&d.path().join("keys")).unwrap();
    let (mut ledger, _) = Ledger::open(&d.path().join("ledger"), key).unwrap();
    let mut cfg = crlm_config::MqttConfig { site: "site-1".into(), device: "box-1".into(), ..Default::default() };

    // Result: with the risk and the signed record (send_risk), and without.
    let case = |pseudonym: &str, risk: f64| {
        let mut c = CaseRecord::example(pseudonym, risk);
        c.model.sha256 = "ab".repeat(32);
        c
    };
    let predicted = ledger.append(&RecordBody::Prediction(case("P-43915E58AF91", 0.7))).unwrap();
    cfg.send_risk = true;
    let full = result_payload(&cfg, &predicted, &predicted.hash()).unwrap();
    check("result", &with_seq(full, 0), true);
    cfg.send_risk = false;
    let lean = result_payload(&cfg, &predicted, &predicted.hash()).unwrap();
    check("result", &with_seq(lean, 1), false);
    let mut refused = case("P-0123456789AB", 0.0);
    (refused.status, refused.outputs, refused.refusal) =
        (crlm_ledger::CaseStatus::Refused, None, Some("clinical only".into()));
    let refusal = ledger.append(&RecordBody::Refusal(refused)).unwrap();
    check("result", &with_seq(result_payload(&cfg, &refusal, &refusal.hash()).unwrap(), 2), false);

    // Alerts of every code, with and without a case.
    for (i, code) in [
        AlertCode::Quarantine,
        AlertCode::Refusal,
        AlertCode::CaseFailed,
        AlertCode::LedgerRecovery,
        AlertCode::OutboxFull,
        AlertCode::LedgerInvalid,
        AlertCode::DiskFull,
        AlertCode::CrossCaseDuplicate,
    ]
    .into_iter()
    .enumerate()
    {
        check("alert", &with_seq(alert_payload(&cfg, code, "why", Some("P-43915E58AF91")), i as i64), true);
        check("alert", &with_seq(alert_payload(&cfg, code, "why", None), i as i64), true);
    }

    for state in [LinkState::Online, LinkState::Offline] {
        check("status", &serde_json::to_value(status_payload(&cfg, state)).unwrap(), true);
    }

    let hb = |some: bool| HeartbeatPayload {
        version: PAYLOAD_VERSION,
        site: cfg.site.clone(),
        device: cfg.device.clone(),
        at: "2026-12-04T00:00:00.000Z".into(),
        uptime_seconds: 60,
        software: "0.1.0".into(),
        model_sha256: Some("ab".repeat(32)),
        demo: true,
        outbox: OutboxState { messages: 1, bytes: 900, full: false },
        disk_free_state_bytes: some.then_some(1 << 30),
        disk_free_share_bytes: some.then_some(1 << 31),
        load_1m: some.then_some(0.5),
        temperature_c: some.then_some(48.0),
        gpu_load: some.then_some(0.1),
        interval_seconds: 30.0,
        last_error: some.then(|| "broker unreachable".into()),
        conditions: if some {
            vec![Condition { code: ConditionCode::DiskFull, message: "the state disk has 3 MB free".into() }]
        } else {
            vec![]
        },
    };
    check("heartbeat", &serde_json::to_value(Message::Heartbeat(hb(true))).unwrap(), true);
    check("heartbeat", &serde_json::to_value(Message::Heartbeat(hb(false))).unwrap(), true);

    let collector = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let head = ledger.head().unwrap();
    let cs = countersign::countersign(&collector, ledger.key_id(), &head, chrono::Utc::now());
    for (stream, cs) in [(Stream::Result, Some(cs)), (Stream::Alert, None)] {
        let ack = Ack {
            version: PAYLOAD_VERSION,
            stream,
            through_seq: 3,
            through_sha256: "cd".repeat(32),
            countersignature: cs,
        };
        check("ack", &serde_json::to_value(&ack).unwrap(), true);
    }
}

#[test]
fn a_payload_whose_kind_is_not_ours_or_whose_fields_are_misnamed_is_not_read() {
    assert!(Message::parse(br#"{"kind": "result", "version": 1}"#).is_none());
    assert!(Message::parse(br#"{"kind": "gossip"}"#).is_none());
    assert!(Message::parse(b"not json").is_none());
    assert!(serde_json::from_str::<Ack>(r#"{"version": 1, "stream": "result", "through": 3}"#).is_err());
}
