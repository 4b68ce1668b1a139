//! The collector's checks: what it stores, rejects and acknowledges.

use super::*;

/// The collector's public key is where the documentation says (issue 21, defect 9: the docs
/// and --help named `collector.key.pub`, the collector wrote `collector.pub`).
#[test]
fn the_collector_key_pair_is_where_the_documentation_says() {
    let d = tempfile::tempdir().unwrap();
    let key = collector_key(&d.path().join("collector.key")).unwrap();
    let public = ledger::read_public_key(&d.path().join("collector.pub")).unwrap();
    assert_eq!(public, key.verifying_key());
    assert!(!d.path().join("collector.key.pub").exists());
    let docs = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/MQTT.md")).unwrap();
    assert!(docs.contains("`collector.pub`") && !docs.contains("collector.key.pub"));
    // The same key is read back, not made again.
    assert_eq!(collector_key(&d.path().join("collector.key")).unwrap().to_bytes(), key.to_bytes());
}

/// A registered box: its device key, ledger and MQTT identity, and the collector's folder.
struct Fixture {
    dir: tempfile::TempDir,
    key: SigningKey,
    ledger: crlm_ledger::Ledger,
    cfg: crlm_config::MqttConfig,
    db: Connection,
    collector: SigningKey,
    registry: Registry,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = ledger::device_key(&dir.path().join("keys")).unwrap();
        let (ledger, _) = crlm_ledger::Ledger::open(&dir.path().join("ledger"), key.clone()).unwrap();
        let devices = dir.path().join("devices");
        std::fs::create_dir_all(devices.join("site01")).unwrap();
        std::fs::copy(dir.path().join("keys/device.pub"), devices.join("site01/box01.pub")).unwrap();
        let db = open_db(&dir.path().join("collector.sqlite")).unwrap();
        let collector = SigningKey::from_bytes(&[9; 32]);
        let registry = Registry::load(Some(&devices));
        let cfg = crlm_config::MqttConfig::default();
        Fixture { dir, key, ledger, cfg, db, collector, registry }
    }

    /// A locked result numbered `seq` on the result stream: (topic, unsigned payload).
    fn result(&mut self, seq: i64, risk: f64) -> (String, Vec<u8>) {
        let record = self
            .ledger
            .append(&crlm_ledger::RecordBody::Prediction(crlm_ledger::CaseRecord::example("P-43915E58AF91", risk)))
            .unwrap();
        let Some(Message::Result(mut p)) = crlm_mqtt::result_payload(&self.cfg, &record, &record.hash()) else {
            panic!("a result payload")
        };
        p.header.seq = Some(seq);
        (crlm_mqtt::topic(&self.cfg, "result"), Message::Result(p).to_json().into_bytes())
    }

    fn seal(&self, topic: &str, payload: &[u8]) -> Vec<u8> {
        auth::seal(Party::Box, topic, payload, &self.key).unwrap()
    }

    fn receive(&mut self, topic: &str, payload: &[u8]) -> Option<(String, Vec<u8>)> {
        receive(&self.db, topic, payload, &mut self.registry, &self.collector).unwrap()
    }

    fn stored(&self) -> i64 {
        self.db.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)).unwrap()
    }

    fn rejected(&self) -> Vec<String> {
        rejected_rows(&self.db).unwrap().into_iter().map(|r| r.reason).collect()
    }
}

#[test]
fn a_genuine_result_is_stored_and_acknowledged_with_a_signed_ack_naming_it() {
    let mut f = Fixture::new();
    let (topic, payload) = f.result(0, 0.3);
    let sealed = f.seal(&topic, &payload);
    let (ack_topic, ack) = f.receive(&topic, &sealed).expect("an ack");
    assert_eq!(ack_topic, "crlm/v1/site01/box01/ack");
    assert_eq!(f.stored(), 1);
    let opened = Opened::new(&ack).unwrap();
    opened.verify(Party::Collector, &ack_topic, &f.collector.verifying_key()).unwrap();
    let ack: Ack = opened.parse().unwrap();
    assert_eq!((ack.stream, ack.through_seq), (Stream::Result, 0));
    // The box computes the same content hash from its unsigned outbox row.
    assert_eq!(Some(ack.through_sha256), auth::content_sha256(&payload));
    assert!(ack.countersignature.is_some());
    assert!(f.rejected().is_empty());
    let _ = f.dir.path();
}

/// Issue 21, defect 3: copies of a real result with a zeroed record signature, with no record,
/// and from an unknown device were stored, exported, acknowledged and countersigned, and the
/// genuine results with the same numbers then dropped.
#[test]
fn forged_results_are_rejected_and_never_take_a_genuine_ones_place() {
    let mut f = Fixture::new();
    let (topic, payload) = f.result(0, 0.3);
    let genuine = f.seal(&topic, &payload);
    let text = String::from_utf8(genuine.clone()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // 1. The record's signature zeroed, the box's message signature kept.
    v["record"]["sig"] = "0".repeat(128).into();
    let zeroed = serde_json::to_vec(&v).unwrap();
    // 2. Without the record and without any signature (an anonymous client's copy).
    let mut bare = v.clone();
    bare.as_object_mut().unwrap().remove("record");
    bare.as_object_mut().unwrap().remove("auth");
    let bare = serde_json::to_vec(&bare).unwrap();
    // 3. Signed by a key of the forger's own.
    let forger = SigningKey::from_bytes(&[5; 32]);
    let own_key = auth::seal(Party::Box, &topic, &payload, &forger).unwrap();
    // 4. From a device the study office never registered, validly self-signed.
    let unknown_topic = topic.replace("box01", "box99");
    let mut unknown = v.clone();
    unknown["device"] = "box99".into();
    let unknown = auth::seal(Party::Box, &unknown_topic, &serde_json::to_vec(&unknown).unwrap(), &forger).unwrap();
    // 5. The genuine message replayed on another leaf.
    let alert_topic = topic.replace("/result", "/alert");
    for (t, p) in
        [(&topic, &zeroed), (&topic, &bare), (&topic, &own_key), (&unknown_topic, &unknown), (&alert_topic, &genuine)]
    {
        assert!(f.receive(t, p).is_none(), "a forged message was acknowledged on {t}");
    }
    assert_eq!(f.stored(), 0, "nothing forged is stored");
    let reasons = f.rejected();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    assert!(reasons[0].contains("signature does not verify"), "{reasons:?}");
    assert!(reasons[1].contains("unsigned"), "{reasons:?}");
    assert!(reasons[2].contains("not the key registered"), "{reasons:?}");
    assert!(reasons[3].contains("box01") || reasons[3].contains("not registered"), "{reasons:?}");
    // The genuine result, arriving after the forgeries, takes its number.
    assert!(f.receive(&topic, &genuine).is_some());
    assert_eq!(f.stored(), 1);
    let rows = export_rows(&f.db).unwrap();
    assert_eq!((rows.len(), rows[0].signature_ok), (1, Some(true)));
}

/// A message whose own signature holds but whose ledger record does not verify (a box bug, or a
/// stolen transport key without the ledger key) is rejected too; and two different messages
/// with one number (a box whose state was reset) keep the first and reject the second.
#[test]
fn a_bad_record_and_a_conflicting_number_are_rejected() {
    let mut f = Fixture::new();
    let (topic, payload) = f.result(0, 0.3);
    let mut v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    v["record"]["sig"] = "0".repeat(128).into();
    let bad_record = f.seal(&topic, &serde_json::to_vec(&v).unwrap());
    assert!(f.receive(&topic, &bad_record).is_none());
    assert!(f.rejected()[0].contains("ledger record does not verify"), "{:?}", f.rejected());
    let genuine = f.seal(&topic, &payload);
    assert!(f.receive(&topic, &genuine).is_some());
    // The same message again is a duplicate (acknowledged again); other content under seq 0 is not.
    assert!(f.receive(&topic, &genuine).is_some());
    let (_, other) = f.result(0, 0.9);
    assert!(f.receive(&topic, &f.seal(&topic, &other)).is_none());
    assert!(f.rejected()[1].contains("already held with other content"), "{:?}", f.rejected());
    let rows = export_rows(&f.db).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].risk_2y, Some(0.3));
}

/// A box enrolled while the collector runs is found without a restart.
#[test]
fn a_box_registered_after_start_is_found() {
    let mut f = Fixture::new();
    std::fs::remove_file(f.dir.path().join("devices/site01/box01.pub")).unwrap();
    f.registry = Registry::load(Some(&f.dir.path().join("devices")));
    let (topic, payload) = f.result(0, 0.3);
    let sealed = f.seal(&topic, &payload);
    assert!(f.receive(&topic, &sealed).is_none());
    std::fs::copy(f.dir.path().join("keys/device.pub"), f.dir.path().join("devices/site01/box01.pub")).unwrap();
    f.registry.loaded = None;
    assert!(f.receive(&topic, &sealed).is_some());
}
