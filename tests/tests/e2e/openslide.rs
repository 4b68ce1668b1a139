//! `crlm wsi region` against OpenSlide's read_region on the same slides and regions: identical
//! pixels (JPEG tiles go through libjpeg-turbo, as in OpenSlide). Runs where
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
    compare_with(PYTHON, slide, tolerance, &[], regions, &[]);
}

/// tools/compare_openslide.py under `python` (whose OpenSlide is the reference), with `extra`
/// options and `envs` for crlm; fails the test on any region over `tolerance`.
fn compare_with(python: &str, slide: &Path, tolerance: u8, extra: &[&str], regions: &[&str], envs: &[(&str, &str)]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/compare_openslide.py");
    let out = Command::new(python)
        .arg(script)
        .arg(crlm_bin())
        .arg(slide)
        .args(regions)
        .args(extra)
        .args(["--tolerance", &tolerance.to_string()])
        .envs(envs.iter().copied())
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
    // JPEG tiles in YCbCr (our writer): libjpeg-turbo decodes them, so identical (docs/IMAGING.md).
    let jpeg = dir.path().join("jpeg.svs");
    write_pyramidal_tiff(&jpeg, &SlideSpec::small(900, 700)).unwrap();
    compare(&jpeg, 0, &["0:100:150:400:300", "1:260:0:200:200"]);
    if let Some(data) = shared_data() {
        // A real Aperio slide (RGB JPEG tiles with shared tables): identical, across tile edges.
        compare(&data.join("wsi/svs/CMU-1-Small-Region.svs"), 0, &[]);
        // A real Aperio JPEG 2000 slide (compression 33005): identical, at both levels.
        compare(&data.join("wsi/svs/TCGA-CR-7395-01A-01-TS1.svs"), 0, &["0:1500:1200:600:400", "1:0:0:500:400"]);
        // libvips pyramids of real tissue (YCbCr JPEG, 4:2:0 below quality 90, 4:4:4 at 90 and
        // up): identical. libvips (Debian's libvips-tools) writes them where it is installed.
        if Command::new("vips").arg("--version").output().is_ok_and(|o| o.status.success()) {
            let sources = [
                ("wsi/ome_tiff/OS-1-detail.ome.tif", "75", "256"),
                ("wsi/ome_tiff/OS-1-detail.ome.tif", "92", "256"),
                ("tiles/tcga_coad/TCGA-AD-6964-01Z-00-DX1_Tile_16896_20480.jpg", "85", "240"),
            ];
            for (i, (src, quality, tile)) in sources.iter().enumerate() {
                let out = dir.path().join(format!("vips-{i}.tif"));
                let made = Command::new("vips")
                    .arg("tiffsave")
                    .arg(data.join(src))
                    .arg(&out)
                    .args(["--tile", "--pyramid", "--compression", "jpeg", "--Q", quality])
                    .args(["--tile-width", tile, "--tile-height", tile])
                    .status()
                    .unwrap();
                assert!(made.success(), "vips tiffsave {src}");
                compare(&out, 0, &[]);
            }
        } else {
            eprintln!("SKIPPED (libvips pyramids): Debian's libvips-tools is not installed");
        }
    }
}

/// OpenSlide 4 (PyPI's openslide-bin, which reads DICOM) for the DICOM slide comparisons; Debian's
/// 3.4.1 cannot. Found through `python3` on PATH; skips with a message where it is absent.
fn openslide4_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openslide, sys; sys.exit(0 if openslide.__library_version__ >= '4' else 1)"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: OpenSlide 4 is not installed (pip install openslide-bin openslide-python)");
    }
    ok
}

/// As [`compare`], with OpenSlide 4 (the `python3` on PATH) and the script's `extra` options.
fn compare4(slide: &Path, extra: &[&str], regions: &[&str]) {
    compare_with("python3", slide, 0, extra, regions, &[]);
}

/// DICOM slides: identical to OpenSlide 4 at level 0 (a grid of regions across tile edges) and
/// over whole lower levels. Regions at lower levels start on the level's own pixel grid: where
/// x / downsample is fractional OpenSlide interpolates between pixels (cairo), crlm does not
/// (docs/IMAGING.md).
#[test]
fn dicom_slides_match_openslide_4() {
    if !openslide4_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let crlm = crlm_bin();
    let layouts: [(&str, &[&str]); 4] = [
        ("full", &[]),
        ("sparse", &["--sparse"]),
        ("split", &["--sparse", "--split"]),
        ("raw", &["--uncompressed", "--split", "--tile", "128"]),
    ];
    for (name, flags) in layouts {
        let d = dir.path().join(name);
        let made = Command::new(&crlm)
            .args(["synth", "dicom-slide"])
            .arg(&d)
            .args(["--width", "1500", "--height", "1100"])
            .args(flags)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        compare4(&d.join("level-0-0.dcm"), &[], &[]);
        compare4(&d.join("level-2-0.dcm"), &[], &["1:0:0:750:550", "2:0:0:400:300", "1:300:404:300:300"]);
    }
    if let Some(data) = shared_data() {
        let wsi = data.join("wsi");
        compare4(&wsi.join("synthetic_openslide_fixtures/boxes_0.dcm"), &[], &["0:0:0:16:16", "0:3:5:20:20"]);
        // This conversion labels JFIF YCbCr frames RGB: OpenSlide 4 then skips the colour
        // conversion (a green-pink picture) while crlm follows the stream (true colours), so
        // OpenSlide's pixels are converted with libjpeg's formula before comparing.
        let cmu = wsi.join("dicom_wsi/cmu-1-small-region/level-0-frames-0-30.dcm");
        compare4(&cmu, &["--reference-ycbcr"], &[]);
        compare4(&cmu, &["--reference-ycbcr"], &["1:0:0:1110:1483", "3:0:0:277:370", "11:0:0:1:1"]);
    }
}

/// The OpenSlide route (feature `openslide`, the library loaded at run time): with
/// OPENSLIDE_READS_ALL=1 even Aperio slides go through it, so the FFI is exercised on real files
/// and must give OpenSlide's own pixels; without the library the native readers still read them.
#[test]
fn slides_read_through_the_loaded_openslide_match_and_its_absence_falls_back_to_native() {
    if !openslide_available() || !openslide4_available() {
        return;
    }
    let Some(data) = shared_data() else { return };
    let cmu = data.join("wsi/svs/CMU-1-Small-Region.svs");
    let info = |envs: &[(&str, &str)]| {
        let out = Command::new(crlm_bin()).args(["wsi", "info"]).arg(&cmu).envs(envs.iter().copied()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let through = info(&[("OPENSLIDE_READS_ALL", "1")]);
    assert!(through.contains("reader: OpenSlide") && through.contains("scanner: aperio"), "{through}");
    let absent = info(&[("OPENSLIDE_READS_ALL", "1"), ("OPENSLIDE_LIBRARY_PATH", "/nonexistent/libopenslide.so.1")]);
    assert!(absent.contains("reader: native TIFF reader"), "{absent}");
    // Regions through the FFI (OpenSlide 4 from openslide-bin) against Debian's OpenSlide 3.4.1.
    let through = [("OPENSLIDE_READS_ALL", "1")];
    compare_with(PYTHON, &cmu, 0, &[], &[], &through);
    let tcga = data.join("wsi/svs/TCGA-CR-7395-01A-01-TS1.svs");
    compare_with(PYTHON, &tcga, 0, &[], &["0:1500:1200:600:400", "1:0:0:500:400"], &through);
}
