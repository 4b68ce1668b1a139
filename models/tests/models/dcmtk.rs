//! DCMTK's command-line tools as the reference the CT and slide codecs are checked against.

use std::process::Command;

/// Whether `tool` runs here; says the test is skipped when it does not.
pub fn dcmtk(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: DCMTK's {tool} is not installed (Debian package dcmtk)");
    }
    ok
}

/// Run `tool`; the test fails with its stderr when it does.
pub fn run(tool: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(tool).args(args).output().unwrap();
    assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
}
