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

/// Issue 21, defect 8: the ledger's last record lost at a power cut (a disk that drops written
/// data; the head still one behind) while the state database kept that case's lock. The service
/// cut the torn tail, recorded the cut at the same number, and the state still called the case
/// `predicted` at a record that is now the recovery note. Now the case is decided and locked again.
#[test]
fn a_lock_lost_with_the_ledger_tail_is_reconciled_with_the_state() {
    use crlm_e2e::signal;
    use crlm_models::synth::{SampleCase, write_sample_case};
    use std::time::Duration;
    let mut site = Site::new(0.3);
    site.env.push(("CRLM_MQTT__ENABLED".into(), "false".into()));
    let mut service = site.start(0);
    for i in 0..2 {
        write_sample_case(&site.share.join(format!("case-{i}")), &SampleCase::new(&format!("TAIL-{i}"))).unwrap();
        site.wait_cases(Duration::from_secs(120), |c| c.iter().filter(|x| x["state"] == "predicted").count() == i + 1);
    }
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
    let before = site.cases();
    let lost = before.iter().find(|c| c["ledger_seq"] == 1).expect("the case locked at record 1").clone();

    // Record 1 torn half-way, the head naming record 0 (as if the append never finished).
    let dir = site.state.join("ledger");
    let bytes = std::fs::read(dir.join(LEDGER_FILE)).unwrap();
    let end0 = bytes.iter().position(|b| *b == b'\n').unwrap();
    let torn = end0 + 1 + (bytes.len() - end0 - 1) / 2;
    std::fs::write(dir.join(LEDGER_FILE), &bytes[..torn]).unwrap();
    let head = serde_json::json!({"format": 1, "seq": 0, "hash": crlm_models::sha256_hex(&bytes[..end0])});
    std::fs::write(dir.join(crlm_ledger::HEAD_FILE), serde_json::to_vec(&head).unwrap()).unwrap();

    let mut service = site.start(1);
    let cases = site.wait_cases(Duration::from_secs(120), |c| {
        c.iter().any(|x| x["pseudonym"] == lost["pseudonym"] && x["state"] == "predicted" && x["ledger_seq"] == 2)
    });
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success());
    assert_eq!(cases.len(), 2, "{cases:#?}");
    let out = site.command(&["ledger", "verify"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let records = crlm_ledger::read_records(&dir).unwrap();
    let kinds: Vec<&str> = records.iter().map(|(r, _)| r.core.kind.name()).collect();
    assert_eq!(kinds, ["prediction", "recovery", "prediction"]);
    let log = site.log(1);
    assert!(log.contains("was lost with the ledger's tail"), "{log}");
}
