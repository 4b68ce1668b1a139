//! `crlm ct volume` against SimpleITK's ImageSeriesReader on the same series (voxels identical,
//! geometry within 1e-4). Runs where python3 has SimpleITK, nibabel and numpy (CI installs them);
//! skips with a message elsewhere.

use crlm_e2e::{crlm_bin, shared_data};
use crlm_models::dicom::{CtSeriesSpec, write_ct_series};
use std::process::Command;

fn simpleitk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import SimpleITK, nibabel, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: python3 with SimpleITK, nibabel and numpy is not installed");
    }
    ok
}

#[test]
fn ct_volumes_match_simpleitk() {
    if !simpleitk_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An oblique, shuffled synthetic series, and the real series where present.
    let mut spec = CtSeriesSpec::axial("P", "1.2.3", "1.2.3.9", 12);
    spec.write_order = Some(vec![5, 3, 11, 0, 7, 1, 9, 2, 10, 4, 8, 6]);
    let (a, b) = (10f64.to_radians().cos(), 10f64.to_radians().sin());
    spec.orientation = [1.0, 0.0, 0.0, 0.0, a, -b];
    spec.origin = [-30.0, 12.5, -80.25];
    let synthetic = dir.path().join("oblique");
    write_ct_series(&synthetic, &spec).unwrap();
    let mut dirs = vec![synthetic];
    if let Some(data) = shared_data() {
        dirs.push(data.join("dicom/ct_series/abdomen_ce_siemens_20sl"));
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/compare_simpleitk.py");
    let out = Command::new("python3").arg(script).arg(crlm_bin()).args(&dirs).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(", OK").count(), dirs.len(), "{text}");
}
