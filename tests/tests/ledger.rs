//! `crlm ledger verify` and `show` on a ledger written by the appliance's ledger code, in the
//! state folder where the service keeps it.

use crlm_appliance::ledger::{LEDGER_FILE, Ledger, device_key};
use crlm_e2e::Site;

#[test]
fn verify_passes_a_good_ledger_and_names_the_first_changed_record() {
    let site = Site::new(1.0);
    let key = device_key(&site.state.join("keys")).unwrap();
    let (mut ledger, _) = Ledger::open(&site.state.join("ledger"), key).unwrap();
    for i in 0..5 {
        ledger.append("prediction", serde_json::json!({"case": format!("C-{i}"), "risk_2y": 0.25})).unwrap();
    }
    drop(ledger);
    let out = site.command(&["ledger", "verify"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK, 5 records"));
    let show = site.command(&["ledger", "show", "3"]).output().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(rec["seq"], 3);
    assert_eq!(rec["body"]["case"], "C-3");

    let file = site.state.join("ledger").join(LEDGER_FILE);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"risk_2y\":0.25", "\"risk_2y\":0.15", 3)).unwrap();
    let out = site.command(&["ledger", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("BAD at record 0"), "{msg}");
}
