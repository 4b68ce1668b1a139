//! The command line as a shell uses it.

use crlm_e2e::crlm_bin;
use std::process::{Command, Stdio};

/// `crlm ... | head -1`: the reader goes away before crlm has written. A printing command ends
/// quietly (as other tools do), never with a panic on the failed write (issue 21, defect 7).
#[test]
fn a_closed_pipe_ends_a_printing_command_quietly() {
    let cmds: [&[&str]; 3] =
        [&["config", "default"], &["validate", "sample-size", "--json"], &["display", "render", "--help"]];
    for args in cmds {
        for _ in 0..3 {
            let mut child = Command::new(crlm_bin())
                .args(args)
                .env_remove("CRLM_CONFIG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "crlm {args:?}: {stderr}");
            assert_ne!(out.status.code(), Some(101), "crlm {args:?}: {stderr}");
        }
    }
}
