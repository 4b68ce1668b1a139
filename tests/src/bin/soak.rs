//! The bounded soak (docs/RELIABILITY.md): cases through the real service while it is killed -9,
//! the broker goes away and the collector restarts, then the count: every locked case at the
//! collector once, none lost, none twice, the ledger and the countersignatures verifying.
//!
//!   cargo run --release -p crlm-e2e --bin soak -- [--cases 200] [--kills 100] [--outages 20]
//!       [--collector-restarts 5] [--broker mosquitto|embedded] [--seed 1]
//!
//! Prints one JSON object with the counts and exits 1 when anything was lost or duplicated.

use anyhow::{Context, bail};
use crlm_e2e::{BrokerKind, Collector, Site, collected, free_port, have, outbox_rows, signal, start_broker, stop};
use crlm_models::synth::{SampleCase, write_sample_case};
use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

struct Args {
    cases: usize,
    kills: usize,
    outages: usize,
    collector_restarts: usize,
    broker: BrokerKind,
    seed: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        cases: 200,
        kills: 100,
        outages: 20,
        collector_restarts: 5,
        broker: if have("mosquitto") { BrokerKind::Mosquitto } else { BrokerKind::Embedded },
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--cases" => a.cases = v.parse()?,
            "--kills" => a.kills = v.parse()?,
            "--outages" => a.outages = v.parse()?,
            "--collector-restarts" => a.collector_restarts = v.parse()?,
            "--broker" if v == "mosquitto" => a.broker = BrokerKind::Mosquitto,
            "--broker" if v == "embedded" => a.broker = BrokerKind::Embedded,
            "--seed" => a.seed = v.parse()?,
            _ => bail!("unknown option {k} {v}"),
        }
    }
    Ok(a)
}

/// The service under test: killed and reaped whenever it goes out of scope, so no early return
/// leaves a zombie or a stray service writing to the site.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many of `count` events, spread evenly over `n` steps, fall on `step`.
fn due(step: usize, n: usize, count: usize) -> usize {
    let upto = |s: usize| (s * count).checked_div(n).unwrap_or(0);
    upto(step + 1) - upto(step)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let started = Instant::now();
    let mut rng = crlm_models::cohort::Rng::new(a.seed);
    let mut site = Site::new(0.2);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    site.env.push(("CRLM_MQTT__URL".into(), url.clone()));
    site.env.push(("CRLM_MQTT__RECONNECT_MAX_SECONDS".into(), "1".into()));
    site.env.push(("CRLM_MQTT__HEARTBEAT_SECONDS".into(), "5".into()));
    let central = site.dir.path().join("central");
    std::fs::create_dir_all(&central)?;
    let mut broker = Some(start_broker(a.broker, port, site.dir.path()));
    let mut collector = Collector::start(&central, &url);
    collector.trusted_by(&mut site);
    let db = collector.db.clone();
    let key = collector.key.clone();
    let mut runs = 0usize;
    let mut service = Service(site.start(runs));
    collector.register(&site.state);
    let (mut kills, mut outages, mut restarts) = (0usize, 0usize, 0usize);
    for i in 0..a.cases {
        write_sample_case(&site.share.join(format!("case-{i:04}")), &SampleCase::new(&format!("SOAK-{i:04}")))?;
        for _ in 0..due(i, a.cases, a.kills) {
            // Somewhere in the case's ingest, prediction, lock or publication.
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 1500));
            service.0.kill()?;
            service.0.wait()?;
            kills += 1;
            runs += 1;
            service = Service(site.start(runs));
        }
        for _ in 0..due(i, a.cases, a.outages) {
            if let Some(b) = broker.take() {
                stop(b);
            }
            std::thread::sleep(Duration::from_millis(2000 + rng.next_u64() % 3000));
            broker = Some(start_broker(a.broker, port, site.dir.path()));
            outages += 1;
        }
        for _ in 0..due(i, a.cases, a.collector_restarts) {
            drop(collector);
            std::thread::sleep(Duration::from_millis(500 + rng.next_u64() % 1500));
            collector = Collector::start(&central, &url);
            restarts += 1;
        }
    }
    // Everything settles: every case locked, at the collector, the outbox empty.
    let deadline = Instant::now() + Duration::from_secs(600 + a.cases as u64 * 3);
    let settled = loop {
        let cases = site.cases();
        let locked = cases.iter().filter(|c| c["ledger_seq"].is_number()).count();
        if locked == a.cases && outbox_rows(&site.state) == 0 && collected(&db).len() >= locked {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    signal(&service.0, "TERM");
    let _ = service.0.wait();
    let cases = site.cases();
    let rows = collected(&db);
    let mut at_collector: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *at_collector.entry(r["pseudonym"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    let locked: Vec<&serde_json::Value> = cases.iter().filter(|c| c["ledger_seq"].is_number()).collect();
    let lost = locked.iter().filter(|c| !at_collector.contains_key(c["case"].as_str().unwrap_or("-"))).count();
    let duplicated = at_collector.values().filter(|n| **n > 1).count();
    let verify = site.command(&["ledger", "verify", "--collector-key"]).arg(key.with_extension("pub")).output()?;
    let verify_text = String::from_utf8_lossy(&verify.stdout).into_owned();
    let proven =
        verify_text.lines().find(|l| l.contains("proven by a second party up to record")).unwrap_or("none").to_string();
    let summary = serde_json::json!({
        "cases_written": a.cases,
        "cases_locked": locked.len(),
        "kill_9": kills,
        "broker_outages": outages,
        "collector_restarts": restarts,
        "broker": match a.broker { BrokerKind::Mosquitto => "mosquitto", BrokerKind::Embedded => "embedded" },
        "results_at_collector": rows.len(),
        "distinct_cases_at_collector": at_collector.len(),
        "cases_failed": cases.iter().filter(|c| c["state"] == "failed").count(),
        "lost": lost,
        "duplicated_at_collector": duplicated,
        "settled": settled,
        "ledger_verifies": verify.status.success(),
        "countersignatures": proven,
        "seconds": started.elapsed().as_secs(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    drop(collector);
    if let Some(b) = broker {
        stop(b);
    }
    if !settled || lost > 0 || duplicated > 0 || !verify.status.success() || locked.len() != a.cases {
        bail!("the soak lost, duplicated or left something: {verify_text}");
    }
    Ok(())
}
