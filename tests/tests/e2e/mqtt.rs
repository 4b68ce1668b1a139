//! Fleet reporting end to end: the real service, a real broker process (Debian's mosquitto where
//! installed, and crlm's embedded rumqttd run as `crlm broker`), the real collector, and
//! mosquitto_sub as an independent client.

use crlm_e2e::{
    BrokerKind, Collector, Site, collected, crlm_bin, free_port, have, latest_heartbeat, outbox_rows, signal,
    start_broker, stop, wait,
};
use crlm_models::synth::{SampleCase, write_sample_case};
use std::process::Command;
use std::time::{Duration, Instant};

/// The broker goes away while 5 cases finish, the service is killed -9 after locking them, and
/// the broker comes back a minute after it went, without persistence: every result reaches the collector once, in
/// order, with its signature checked; the box's outbox empties only on the collector's acks, and
/// the ledger keeps the collector's countersignature.
fn outage(kind: BrokerKind) {
    let mut site = Site::new(0.3);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    site.env.push(("CRLM_MQTT__RECONNECT_MAX_SECONDS".into(), "1".into()));
    let mut broker = start_broker(kind, port, site.dir.path());
    let collector = Collector::start(site.dir.path(), &url);
    let (db, key) = (collector.db.clone(), collector.key.clone());
    collector.trusted_by(&mut site);
    let mut service = site.start(0);
    collector.register(&site.state);
    std::thread::sleep(Duration::from_secs(1));

    stop(broker);
    let outage_began = Instant::now();
    for i in 0..5 {
        write_sample_case(&site.share.join(format!("case-{i}")), &SampleCase::new(&format!("MQTT-{i:03}"))).unwrap();
    }
    site.wait_cases(Duration::from_secs(120), |c| c.len() == 5 && c.iter().all(|x| x["state"] == "predicted"));
    assert_eq!(outbox_rows(&site.state), 5, "locked results wait in the outbox while the broker is away");
    // Killed between lock and PUBACK: nothing was published yet.
    service.kill().unwrap();
    service.wait().unwrap();
    let service = site.start(1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(outbox_rows(&site.state), 5);
    // The issue's outage: the broker comes back a minute after it went, without its state.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(outage_began.elapsed()));
    assert_eq!(outbox_rows(&site.state), 5, "nothing leaves the outbox while the broker is away");
    broker = start_broker(kind, port, site.dir.path());
    wait("5 results at the collector", Duration::from_secs(60), || collected(&db).len() == 5);
    wait("the box's outbox to empty after the collector's acks", Duration::from_secs(30), || {
        outbox_rows(&site.state) == 0
    });
    // The outage's connection errors are no longer reported once the link is back (issue 21,
    // defect 6: the heartbeat kept naming them for good).
    wait("a heartbeat after the reconnect without the outage's error", Duration::from_secs(20), || {
        latest_heartbeat(&db).is_some_and(|h| h["last_error"].is_null())
    });
    let rows = collected(&db);
    let seqs: Vec<u64> = rows.iter().map(|r| r["sequence"].as_u64().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted, "in ledger order: {rows:#?}");
    let mut pseudonyms: Vec<&str> = rows.iter().map(|r| r["pseudonym"].as_str().unwrap()).collect();
    pseudonyms.dedup();
    assert_eq!(pseudonyms.len(), 5, "each once: {rows:#?}");
    assert!(rows.iter().all(|r| r["signature_ok"] == true), "{rows:#?}");
    signal(&service, "TERM");
    let mut service = service;
    assert!(service.wait().unwrap().success());
    let verify =
        site.command(&["ledger", "verify", "--collector-key"]).arg(key.with_extension("pub")).output().unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && text.contains("proven by a second party up to record"), "{text}");
    let csv = Command::new(crlm_bin()).args(["fleet", "export", "--db"]).arg(&db).output().unwrap();
    let csv = String::from_utf8_lossy(&csv.stdout);
    assert!(csv.starts_with("site,device,sequence,pseudonym,status,surgery_date,risk_2y"), "{csv}");
    drop(collector);
    stop(broker);
}

#[test]
fn results_survive_an_outage_of_the_embedded_broker() {
    outage(BrokerKind::Embedded);
}

#[test]
fn results_survive_an_outage_of_mosquitto() {
    if !have("mosquitto") {
        eprintln!("SKIPPED: mosquitto (Debian package) is not installed");
        return;
    }
    outage(BrokerKind::Mosquitto);
}

/// The retained status message as mosquitto_sub (protocol `mqttv311` or `mqttv5`) sees it, or
/// null when none comes within 3 s.
fn retained_status(port: u16, protocol: &str) -> serde_json::Value {
    let out = Command::new("mosquitto_sub")
        .args(["-V", protocol, "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "crlm/v1/+/+/status"])
        .args(["-C", "1", "-W", "3"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
}

/// mosquitto_sub, an independent client, sees the retained `online` status, and the Last Will
/// turns it `offline` when the service is killed.
#[test]
fn last_will_marks_a_killed_box_offline() {
    if !have("mosquitto") || !have("mosquitto_sub") {
        eprintln!("SKIPPED: mosquitto and mosquitto-clients (Debian packages) are not installed");
        return;
    }
    let mut site = Site::new(0.3);
    let port = free_port();
    site.env.push(("CRLM_MQTT__URL".into(), format!("mqtt://127.0.0.1:{port}")));
    let broker = start_broker(BrokerKind::Mosquitto, port, site.dir.path());
    let status = || retained_status(port, "mqttv311");
    let mut service = site.start(0);
    wait("status online", Duration::from_secs(20), || status()["state"] == "online");
    let s = status();
    assert_eq!(
        (s["version"].as_u64(), s["site"].as_str(), s["device"].as_str()),
        (Some(1), Some("site01"), Some("box01"))
    );
    service.kill().unwrap();
    service.wait().unwrap();
    wait("status offline (Last Will)", Duration::from_secs(30), || status()["state"] == "offline");
    stop(broker);
}

/// `crlm fleet watch`: JSON lines for scripts (status and heartbeats, the signed record left
/// out), and the operator's table, which says a killed box is OFFLINE once its Last Will arrives.
/// Both check signatures against the collector's registry (`--devices`), in which the box was
/// enrolled before it started.
#[test]
fn fleet_watch_shows_each_box_and_its_health() {
    let mut site = Site::new(0.3);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "1".into()));
    let broker = start_broker(BrokerKind::Embedded, port, site.dir.path());
    let json_out = site.dir.path().join("watch.jsonl");
    let table_out = site.dir.path().join("watch.txt");
    let spawn_watch = |args: &[&str], out: &std::path::Path| {
        Command::new(crlm_bin())
            .args(["fleet", "watch", "--broker", &url])
            .args(args)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let devices = site.dir.path().join("devices");
    std::fs::create_dir_all(devices.join("site01")).unwrap();
    // Enrolment: the box's key made first (the service uses it), its public half registered.
    crlm_ledger::device_key(&site.state.join("keys")).unwrap();
    std::fs::copy(site.state.join("keys").join("device.pub"), devices.join("site01").join("box01.pub")).unwrap();
    let devices_arg = devices.to_string_lossy().into_owned();
    let json_watch = spawn_watch(&["--json", "--devices", &devices_arg], &json_out);
    let table_watch = spawn_watch(&["--every", "0.3", "--devices", &devices_arg], &table_out);
    std::thread::sleep(Duration::from_millis(500));
    let mut service = site.start(0);
    write_sample_case(&site.share.join("w1"), &SampleCase::new("WATCH-1")).unwrap();
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&json_out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let leaf = |v: &serde_json::Value| v["topic"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
    let verified = |v: &serde_json::Value| v["verified"] == true;
    wait("status, heartbeats and the result as verified JSON lines", Duration::from_secs(60), || {
        let l = lines();
        l.iter().any(|v| leaf(v) == "status")
            && l.iter().filter(|v| leaf(v) == "heartbeat" && verified(v)).count() >= 2
            && l.iter().any(|v| leaf(v) == "result" && verified(v))
    });
    for v in lines() {
        assert!(v["received_at"].is_string() && v["payload"]["version"] == 1, "{v}");
        assert!(v["payload"].get("record").is_none(), "the signed record is left out: {v}");
        assert!(verified(&v) && v["refused"].is_null(), "{v}");
    }
    let table = || std::fs::read_to_string(&table_out).unwrap_or_default();
    let last_table = |t: String| t.rsplit("# ").next().unwrap_or("").to_string();
    wait("the box in the table, healthy", Duration::from_secs(20), || {
        let t = last_table(table());
        t.lines().any(|l| l.starts_with("site01/box01") && l.contains(" ok ") && l.contains(" 1 "))
            && t.contains("signatures checked against 1 registered box(es)")
    });
    service.kill().unwrap();
    service.wait().unwrap();
    wait("the killed box OFFLINE in the table", Duration::from_secs(30), || {
        last_table(table()).lines().any(|l| l.starts_with("site01/box01") && l.contains("OFFLINE"))
    });
    for w in [json_watch, table_watch] {
        signal(&w, "TERM");
        let mut w = w;
        assert!(w.wait().unwrap().success());
    }
    stop(broker);
}

/// A CA, a broker certificate for 127.0.0.1 and a client certificate, made here with rcgen.
struct Pki {
    ca: std::path::PathBuf,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
    /// Client certificates by common name (`client` is `box01`'s).
    clients: std::collections::HashMap<String, (std::path::PathBuf, std::path::PathBuf)>,
}

fn make_pki(dir: &std::path::Path) -> Pki {
    make_pki_for(dir, &["box01"])
}

/// A CA, the broker's certificate and one client certificate per common name in `names`.
fn make_pki_for(dir: &std::path::Path, names: &[&str]) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "crlm test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer).unwrap();
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let server = leaf("broker", vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
    let clients: std::collections::HashMap<_, _> =
        names.iter().map(|n| (n.to_string(), leaf(n, vec![], ExtendedKeyUsagePurpose::ClientAuth))).collect();
    let client =
        clients.get("box01").cloned().unwrap_or_else(|| leaf("box01", vec![], ExtendedKeyUsagePurpose::ClientAuth));
    Pki { ca: dir.join("ca.pem"), server, client, clients }
}

/// The fenced code blocks of a Markdown file, in order.
fn code_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in md.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(b) => blocks.push(b),
                None => current = Some(String::new()),
            }
        } else if let Some(b) = current.as_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
}

/// The documented deployment (docs/MQTT.md, "Broker authentication and topic ACLs"), run as
/// written: mosquitto with mutual TLS, the certificate's CN as the user name, and the ACL file
/// from the docs for the collector and two enrolled boxes. One box cannot publish under the
/// other's prefix nor read its acks, a box cannot publish acks, and the collector reads results
/// and writes acks. (Signatures make a forged message harmless anyway: attacks.rs; this is the
/// broker's own wall.)
#[test]
fn the_documented_mosquitto_acl_keeps_each_box_to_its_own_topics() {
    if !have("mosquitto") || !have("mosquitto_sub") || !have("mosquitto_pub") {
        eprintln!("SKIPPED: mosquitto and mosquitto-clients (Debian packages) are not installed");
        return;
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/MQTT.md")).unwrap();
    let blocks = code_blocks(&docs);
    let conf = blocks.iter().find(|b| b.contains("use_identity_as_username true")).expect("the broker configuration");
    let office_acl = blocks.iter().find(|b| b.contains("user crlm-collector")).expect("the office's ACL");
    let box_acl = blocks.iter().find(|b| b.starts_with("user site01.box01")).expect("a box's ACL block");
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki_for(&dir.path().join("pki"), &["site01.box01", "site01.box02", "crlm-collector"]);
    let acl = dir.path().join("crlm.acl");
    std::fs::write(&acl, format!("{office_acl}\n{box_acl}\n{}", box_acl.replace("box01", "box02"))).unwrap();
    let port = free_port();
    let conf = conf
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace("/etc/mosquitto/ca/crlm-ca.pem", &pki.ca.display().to_string())
        .replace("/etc/mosquitto/certs/broker.pem", &pki.server.0.display().to_string())
        .replace("/etc/mosquitto/certs/broker.key", &pki.server.1.display().to_string())
        .replace("/etc/mosquitto/crlm.acl", &acl.display().to_string());
    assert!(!conf.contains("/etc/mosquitto"), "a path in the documented configuration was not replaced: {conf}");
    let conf_path = dir.path().join("mosquitto.conf");
    std::fs::write(&conf_path, format!("{conf}persistence false\n")).unwrap();
    let broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait("mosquitto with the documented ACL", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let tls = |c: &mut Command, who: &str| {
        let (cert, key) = &pki.clients[who];
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .arg("--cafile")
            .arg(&pki.ca)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key);
    };
    // `who` subscribes to `topic`; `attempts` are published in order, each (client, topic,
    // payload); returns the first message `who` received.
    let first_seen = |who: &str, topic: &str, attempts: &[(&str, &str, &str)]| -> String {
        let mut sub = Command::new("mosquitto_sub");
        tls(&mut sub, who);
        let sub = sub
            .args(["-t", topic, "-C", "1", "-W", "10", "-i", &format!("sub-{who}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        for (client, t, payload) in attempts {
            let mut publ = Command::new("mosquitto_pub");
            tls(&mut publ, client);
            let out = publ.args(["-t", t, "-m", payload, "-i", &format!("pub-{client}")]).output().unwrap();
            assert!(out.status.success(), "{client} could not even connect: {out:?}");
        }
        let out = sub.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The collector reads box01's results; box02's result under box01's prefix never arrives.
    let seen = first_seen(
        "crlm-collector",
        "crlm/v1/+/+/result",
        &[
            ("site01.box02", "crlm/v1/site01/box01/result", "forged by box02"),
            ("site01.box01", "crlm/v1/site01/box01/result", "genuine from box01"),
        ],
    );
    assert_eq!(seen, "genuine from box01");
    // box01 reads its own acks; an ack written by a box (itself or another) never arrives.
    let seen = first_seen(
        "site01.box01",
        "crlm/v1/site01/box01/ack",
        &[
            ("site01.box02", "crlm/v1/site01/box01/ack", "ack forged by box02"),
            ("site01.box01", "crlm/v1/site01/box01/ack", "ack forged by box01"),
            ("crlm-collector", "crlm/v1/site01/box01/ack", "ack from the collector"),
        ],
    );
    assert_eq!(seen, "ack from the collector");
    // box02 cannot read box01's acks: it sees only its own.
    let seen = first_seen(
        "site01.box02",
        "crlm/v1/+/+/ack",
        &[
            ("crlm-collector", "crlm/v1/site01/box01/ack", "ack for box01"),
            ("crlm-collector", "crlm/v1/site01/box02/ack", "ack for box02"),
        ],
    );
    assert_eq!(seen, "ack for box02");
    stop(broker);
}

/// Mutual TLS against mosquitto (`require_certificate true`) with certificates made in the test:
/// the box reports with its client certificate, the collector receives and acknowledges over TLS,
/// and a client without a certificate is refused by the broker.
#[test]
fn mutual_tls_with_mosquitto() {
    if !have("mosquitto") || !have("mosquitto_sub") {
        eprintln!("SKIPPED: mosquitto and mosquitto-clients (Debian packages) are not installed");
        return;
    }
    let mut site = Site::new(0.3);
    let pki = make_pki(&site.dir.path().join("pki"));
    let port = free_port();
    let conf = site.dir.path().join("mosquitto-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             allow_anonymous true\npersistence false\n",
            pki.ca.display(),
            pki.server.0.display(),
            pki.server.1.display()
        ),
    )
    .unwrap();
    let broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait("mosquitto with TLS", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let url = format!("mqtts://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__CA_FILE".into(), pki.ca.display().to_string()));
    site.env.push(("CRLM_MQTT__CLIENT_CERT_FILE".into(), pki.client.0.display().to_string()));
    site.env.push(("CRLM_MQTT__CLIENT_KEY_FILE".into(), pki.client.1.display().to_string()));
    // The collector connects over TLS with the same client identity (the test's one CA).
    let central = site.dir.path().join("central");
    std::fs::create_dir_all(central.join("devices")).unwrap();
    let key = central.join("collector.key");
    let db = central.join("collector.sqlite");
    let collector = Command::new(crlm_bin())
        .args(["fleet", "collect", "--broker", &url, "--client-id", "tls-collector", "--db"])
        .arg(&db)
        .arg("--key")
        .arg(&key)
        .arg("--devices")
        .arg(central.join("devices"))
        .arg("--ca-file")
        .arg(&pki.ca)
        .arg("--cert-file")
        .arg(&pki.client.0)
        .arg("--key-file")
        .arg(&pki.client.1)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(central.join("collector.log")).unwrap())
        .spawn()
        .unwrap();
    wait("the collector key", Duration::from_secs(10), || key.with_extension("pub").exists());
    site.env.push(("CRLM_MQTT__COLLECTOR_KEY".into(), key.with_extension("pub").display().to_string()));
    let mut service = site.start(0);
    let device_pub = site.state.join("keys/device.pub");
    wait("the device key", Duration::from_secs(20), || device_pub.exists());
    std::fs::create_dir_all(central.join("devices/site01")).unwrap();
    std::fs::copy(&device_pub, central.join("devices/site01/box01.pub")).unwrap();
    let sub = |with_cert: bool| {
        let mut c = Command::new("mosquitto_sub");
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "crlm/v1/+/+/status", "-C", "1", "-W", "4"])
            .arg("--cafile")
            .arg(&pki.ca);
        if with_cert {
            c.arg("--cert").arg(&pki.client.0).arg("--key").arg(&pki.client.1);
        }
        c.output().unwrap()
    };
    wait("the box online over mutual TLS", Duration::from_secs(30), || {
        serde_json::from_slice::<serde_json::Value>(&sub(true).stdout).is_ok_and(|v| v["state"] == "online")
    });
    let refused = sub(false);
    assert!(
        !refused.status.success() && refused.stdout.is_empty(),
        "a client without a certificate got in: {refused:?}"
    );
    write_sample_case(&site.share.join("tls-1"), &SampleCase::new("TLS-1")).unwrap();
    wait("the result at the collector over TLS", Duration::from_secs(60), || collected(&db).len() == 1);
    wait("the box's outbox emptied by the collector's ack", Duration::from_secs(30), || outbox_rows(&site.state) == 0);
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
    stop(collector);
    stop(broker);
    let log = site.log(0);
    assert!(log.contains("connected to the broker"), "{log}");
}

/// MQTT 5 (`mqtt.protocol = "5"`) against mosquitto: the retained status and the Last Will reach
/// an MQTT 5 subscriber, results locked while the broker is away reach the (MQTT 3.1.1)
/// collector once it is back, and the collector's acks, received over the box's MQTT 5
/// subscription, empty the outbox.
#[test]
fn mqtt5_box_with_mosquitto() {
    if !have("mosquitto") || !have("mosquitto_sub") {
        eprintln!("SKIPPED: mosquitto and mosquitto-clients (Debian packages) are not installed");
        return;
    }
    let mut site = Site::new(0.3);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__PROTOCOL".into(), "5".into()));
    site.env.push(("CRLM_MQTT__RECONNECT_MAX_SECONDS".into(), "1".into()));
    let mut broker = start_broker(BrokerKind::Mosquitto, port, site.dir.path());
    let collector = Collector::start(site.dir.path(), &url);
    collector.trusted_by(&mut site);
    let db = collector.db.clone();
    let status = || retained_status(port, "mqttv5");
    let mut service = site.start(0);
    collector.register(&site.state);
    wait("status online over MQTT 5", Duration::from_secs(20), || status()["state"] == "online");
    assert!(site.log(0).contains("protocol=\"5\"") || site.log(0).contains("protocol=5"), "{}", site.log(0));
    write_sample_case(&site.share.join("case-0"), &SampleCase::new("MQTT5-000")).unwrap();
    wait("the first result at the collector", Duration::from_secs(60), || collected(&db).len() == 1);

    stop(broker);
    for i in 1..3 {
        write_sample_case(&site.share.join(format!("case-{i}")), &SampleCase::new(&format!("MQTT5-{i:03}"))).unwrap();
    }
    site.wait_cases(Duration::from_secs(120), |c| c.len() == 3 && c.iter().all(|x| x["state"] == "predicted"));
    assert!(outbox_rows(&site.state) >= 2, "results locked while the broker is away wait in the outbox");
    broker = start_broker(BrokerKind::Mosquitto, port, site.dir.path());
    wait("3 results at the collector", Duration::from_secs(60), || collected(&db).len() == 3);
    wait("the outbox to empty on the collector's acks", Duration::from_secs(30), || outbox_rows(&site.state) == 0);
    let rows = collected(&db);
    assert!(rows.iter().all(|r| r["signature_ok"] == true), "{rows:#?}");

    service.kill().unwrap();
    service.wait().unwrap();
    wait("status offline (MQTT 5 Last Will)", Duration::from_secs(30), || status()["state"] == "offline");
    drop(collector);
    stop(broker);
}
