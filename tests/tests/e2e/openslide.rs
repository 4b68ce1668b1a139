//! `crlm wsi region` against OpenSlide's read_region on the same slides and regions. Runs where
//! Debian's python3-openslide is installed (CI installs it); skips with a message elsewhere.

use crlm_e2e::{crlm_bin, shared_data};
use crlm_models::slide::{SlideSpec, write_pyramidal_tiff};
use std::path::Path;
use std::process::Command;

const PYTHON: &str = "/usr/bin/python3";

fn openslide_available() -> bool {
    let ok = Command::new(PYTHON).args(["-c", "import openslide"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: Debian's python3-openslide is not installed");
    }
    ok
}

fn compare(slide: &Path, tolerance: u8, regions: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/compare_openslide.py");
    let out = Command::new(PYTHON)
        .arg(script)
        .arg(crlm_bin())
        .arg(slide)
        .args(regions)
        .args(["--tolerance", &tolerance.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{}: {text}", slide.display());
}

#[test]
fn slide_regions_match_openslide() {
    if !openslide_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Lossless tiles: identical pixels, at every level.
    let raw = dir.path().join("raw.svs");
    write_pyramidal_tiff(&raw, &SlideSpec { uncompressed: true, ..SlideSpec::small(900, 700) }).unwrap();
    compare(&raw, 0, &["0:100:150:400:300", "1:260:0:200:200", "2:0:0:225:175"]);
    // JPEG tiles in YCbCr (our writer): within 3 grey levels (see docs/IMAGING.md).
    let jpeg = dir.path().join("jpeg.svs");
    write_pyramidal_tiff(&jpeg, &SlideSpec::small(900, 700)).unwrap();
    compare(&jpeg, 3, &["0:100:150:400:300", "1:260:0:200:200"]);
    // A real Aperio slide (RGB JPEG tiles with shared tables): within 2, across tile edges.
    if let Some(data) = shared_data() {
        compare(&data.join("wsi/svs/CMU-1-Small-Region.svs"), 2, &[]);
        // A real Aperio JPEG 2000 slide (compression 33005): identical, at both levels.
        compare(&data.join("wsi/svs/TCGA-CR-7395-01A-01-TS1.svs"), 0, &["0:1500:1200:600:400", "1:0:0:500:400"]);
    }
}
