//! `crlm ledger verify` and `show` on a ledger written by the appliance's ledger code, in the
//! state folder where the service keeps it.

use crlm_e2e::Site;
use crlm_ledger::{CaseRecord, LEDGER_FILE, Ledger, RecordBody, device_key};

#[test]
fn verify_passes_a_good_ledger_and_names_the_first_changed_record() {
    let site = Site::new(1.0);
    let key = device_key(&site.state.join("keys")).unwrap();
    let (mut ledger, _) = Ledger::open(&site.state.join("ledger"), key).unwrap();
    for i in 0..5 {
        ledger.append(&RecordBody::Prediction(CaseRecord::example(&format!("C-{i}"), 0.25))).unwrap();
    }
    drop(ledger);
    let out = site.command(&["ledger", "verify"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK, 5 records"));
    let show = site.command(&["ledger", "show", "3"]).output().unwrap();
    let rec: crlm_ledger::Record = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec.core.seq, 3);
    assert_eq!(rec.case().map(|c| c.case).as_deref(), Some("C-3"));

    let file = site.state.join("ledger").join(LEDGER_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"risk_2y\":0.25", "\"risk_2y\":0.15", 3)).unwrap();
    let out = site.command(&["ledger", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("BAD at record 0"), "{msg}");
}

#[test]
fn a_kill_9_loop_during_appends_loses_no_record_whose_append_returned() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let site = Site::new(1.0);
    let mut acknowledged: Vec<(u64, String)> = Vec::new();
    let mut rng = crlm_models::cohort::Rng::new(9);
    for round in 0..8 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ledger_append"))
            .arg(&site.state)
            .arg(round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>());
        std::thread::sleep(std::time::Duration::from_millis(30 + rng.next_u64() % 120));
        crlm_e2e::signal(&child, "KILL");
        let _ = child.wait();
        for line in reader.join().unwrap() {
            let (seq, id) = line.split_once(' ').unwrap();
            acknowledged.push((seq.parse().unwrap(), id.to_string()));
        }
    }
    assert!(acknowledged.len() > 8, "the helper appended too little to test anything: {}", acknowledged.len());
    let out = site.command(&["ledger", "verify"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let records = crlm_ledger::read_records(&site.state.join("ledger")).unwrap();
    for (seq, id) in &acknowledged {
        let (r, _) = &records[*seq as usize];
        let case = r.case().map(|c| c.case);
        assert_eq!(
            case.as_deref(),
            Some(id.as_str()),
            "record {seq} whose append returned is not the one acknowledged"
        );
    }
}
