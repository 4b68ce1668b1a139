//! `crlm wsi region` against OpenSlide's read_region on the same slides and regions: identical
//! pixels (JPEG tiles go through libjpeg-turbo, as in OpenSlide). Runs where
//! Debian's python3-openslide is installed (CI installs it); skips with a message elsewhere.

use crlm_e2e::{Site, crlm_bin, shared_data, signal};
use crlm_models::slide::mrxs::write_mrxs;
use crlm_models::slide::vms::write_vms;
use crlm_models::slide::{SlideSpec, write_pyramidal_tiff};
use crlm_models::synth::{SampleCase, write_sample_case};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

/// A Hamamatsu VMS slide (an index and the JPEG files it names, as `crlm synth vms-slide`
/// writes it) and a 3DHISTECH MRXS slide (`crlm synth mrxs-slide`) go through the loaded
/// OpenSlide: `crlm wsi` names the reader and the scanner, and their regions are OpenSlide's own
/// (OpenSlide 4 from openslide-bin, and Debian's 3.4.1).
#[test]
fn vms_and_mrxs_slides_read_through_openslide_match_it() {
    if !openslide_available() || !openslide4_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(crlm_bin())
        .args(["synth", "vms-slide"])
        .arg(dir.path())
        .args(["--width", "2048", "--height", "1536"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let index = dir.path().join("slide.vms");
    let out = Command::new(crlm_bin()).args(["wsi", "info"]).arg(&index).output().unwrap();
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(info.contains("reader: OpenSlide") && info.contains("scanner: hamamatsu"), "{info}");
    assert!(info.contains("level 0: 2048x1536"), "{info}");
    compare4(&index, &[], &[]);
    compare4(&index, &[], &["1:0:0:1024:768", "3:0:0:256:192"]);
    compare(&index, 0, &["0:700:300:500:400"]);

    // MRXS: opened by its .mrxs or by its Slidedat.ini, the same slide.
    let made = Command::new(crlm_bin())
        .args(["synth", "mrxs-slide"])
        .arg(dir.path().join("mrxs"))
        .args(["--width", "2048", "--height", "1536"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mrxs = dir.path().join("mrxs/slide.mrxs");
    for p in [mrxs.clone(), dir.path().join("mrxs/slide/Slidedat.ini")] {
        let out = Command::new(crlm_bin()).args(["wsi", "info"]).arg(&p).output().unwrap();
        let info = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(info.contains("reader: OpenSlide") && info.contains("scanner: mirax"), "{info}");
        assert!(info.contains("level 0: 2048x1536") && info.contains("level 3: 256x192"), "{info}");
    }
    compare4(&mrxs, &[], &[]);
    compare4(&mrxs, &[], &["1:0:0:1024:768", "3:0:0:256:192"]);
    compare(&mrxs, 0, &["0:700:300:500:400"]);
}

/// A multi-file slide format the service joins in the share.
#[derive(Clone, Copy, Debug)]
enum MultiFile {
    Vms,
    Mrxs,
}

/// Write the sample case `name` into the share with a multi-file slide instead of an SVS: a VMS
/// slide in its `slide/` folder, or an MRXS slide (`slide.mrxs` beside the folder `slide/`). The
/// index first, its other files a second and a half later (as a slow copy would bring them), so
/// the index must wait for them. Returns the case folder.
fn multi_file_case(site: &Site, name: &str, patient: &str, format: MultiFile) -> PathBuf {
    multi_file_case_of(site, name, patient, format, SlideSpec { levels: 4, ..SlideSpec::small(2048, 1536) })
}

/// As [`multi_file_case`], with the slide written from `spec`.
fn multi_file_case_of(site: &Site, name: &str, patient: &str, format: MultiFile, spec: SlideSpec) -> PathBuf {
    let case = site.share.join(name);
    write_sample_case(&case, &SampleCase { with_slide: false, ..SampleCase::new(patient) }).unwrap();
    let staged = site.dir.path().join(format!("staged-{name}"));
    let (files, into) = match format {
        MultiFile::Vms => (write_vms(&staged, "slide", &spec).unwrap(), case.join("slide")),
        MultiFile::Mrxs => (write_mrxs(&staged, "slide", &spec).unwrap(), case.clone()),
    };
    // Index first: the .vms is first; for MRXS, Slidedat.ini (last written) goes first.
    let mut order: Vec<&PathBuf> = files.iter().collect();
    if let MultiFile::Mrxs = format {
        order.rotate_right(1);
    }
    for (i, f) in order.into_iter().enumerate() {
        let to = into.join(f.strip_prefix(&staged).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to).unwrap();
        if i == 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    case
}

/// Every quarantine record's text under the site's state.
fn quarantine_text(site: &Site) -> String {
    std::fs::read_dir(site.state.join("quarantine"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Formats only OpenSlide reads, through the service: with OpenSlide a VMS slide's and an MRXS
/// slide's files are each joined in the share into one slide and the cases are locked with their
/// slide (also a second VMS slide that shares a part's bytes with the first); `crlm inspect` shows the index as the slide (OpenSlide, its vendor) and the other
/// files as its parts. Nothing is quarantined.
#[test]
fn multi_file_slides_in_the_share_are_joined_read_through_openslide_and_locked() {
    if !openslide4_available() {
        return;
    }
    let site = Site::new(0.3);
    let service = site.start(0);
    let vms = multi_file_case(&site, "case-vms", "VMS-0001", MultiFile::Vms);
    let mrxs = multi_file_case(&site, "case-mrxs", "MRXS-0001", MultiFile::Mrxs);
    // Another slide whose macro image (the same label) is byte for byte the first one's: a part
    // shared by two slides is each one's, not a re-export.
    let shifted = SlideSpec {
        levels: 4,
        pixel: std::sync::Arc::new(|x, y| crlm_models::slide::writer::he_like_pixel(x + 37, y)),
        ..SlideSpec::small(2048, 1536)
    };
    multi_file_case_of(&site, "case-vms-2", "VMS-0003", MultiFile::Vms, shifted);
    let cases =
        site.wait_cases(Duration::from_secs(300), |c| c.len() == 3 && c.iter().all(|x| x["state"] == "predicted"));
    let macros: Vec<Vec<u8>> = ["case-vms", "case-vms-2"]
        .iter()
        .map(|c| std::fs::read(site.share.join(c).join("slide/slide_macro.jpg")).unwrap())
        .collect();
    assert_eq!(macros[0], macros[1], "the two VMS slides share their macro's bytes");
    for c in &cases {
        assert_eq!(c["modalities"]["slide"]["count"], 1, "{cases:#?}");
    }
    assert!(quarantine_text(&site).is_empty(), "{}", quarantine_text(&site));
    let inspect = |dir: &Path| -> Vec<serde_json::Value> {
        let out = site.command(&["inspect", "--json"]).arg(dir).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    for (dir, vendor, parts, members) in [
        (vms.join("slide"), "hamamatsu", 3, serde_json::json!(["slide.jpg", "slide_map.jpg", "slide_macro.jpg"])),
        (mrxs.clone(), "mirax", 3, serde_json::json!(["Index.dat", "Data0000.dat", "../slide.mrxs"])),
    ] {
        let items = inspect(&dir);
        let n = items.iter().filter(|i| i["kind"] == "slide_part" && i["verdict"] == "usable").count();
        assert_eq!(n, parts, "{items:#?}");
        let index = items.iter().find(|i| i["kind"] == "slide").expect("the index as the slide");
        assert_eq!(index["format"], "open_slide", "{index:#?}");
        assert_eq!(index["scanner"], vendor, "{index:#?}");
        assert_eq!(index["members"], members, "{index:#?}");
    }
    // What ran: the slide was used, its hash in the lock covers every file of it.
    let ledger: String = (0..8)
        .filter_map(|n| site.command(&["ledger", "show", &n.to_string()]).output().ok())
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert_eq!(ledger.matches("\"tiles_used\"").count(), 3, "{ledger}");
    signal(&service, "TERM");
    let mut service = service;
    assert!(service.wait().unwrap().success(), "{}", site.log(0));
}

/// Without OpenSlide the same slides are quarantined naming their format and what to do; their
/// other files are not refused as strays (the index names them). A bare JPEG that no index
/// names, in a folder marked READY, is quarantined saying so. The service keeps running.
#[test]
fn without_openslide_multi_file_slides_are_quarantined_naming_their_format() {
    let mut site = Site::new(0.3);
    site.env.push(("OPENSLIDE_LIBRARY_PATH".into(), "/nonexistent/libopenslide.so.1".into()));
    let mut service = site.start(0);
    multi_file_case(&site, "case-vms", "VMS-0002", MultiFile::Vms);
    multi_file_case(&site, "case-mrxs", "MRXS-0002", MultiFile::Mrxs);
    let stray = site.share.join("case-stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(site.dir.path().join("staged-case-vms/slide_map.jpg"), stray.join("photo.jpg")).unwrap();
    std::fs::write(stray.join("READY"), b"").unwrap();
    let start = std::time::Instant::now();
    let done = |t: &str| t.contains("Hamamatsu VMS") && t.contains("3DHISTECH MRXS") && t.contains("photo.jpg");
    while !done(&quarantine_text(&site)) {
        assert!(start.elapsed() < Duration::from_secs(90), "{}\n{}", quarantine_text(&site), site.log(0));
        assert!(service.try_wait().unwrap().is_none(), "{}", site.log(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = quarantine_text(&site);
    assert!(text.contains("slide.format") && text.contains("OpenSlide"), "{text}");
    assert!(text.contains("slide.index") && text.contains("no slide index"), "{text}");
    for part in
        ["slide/slide.jpg", "slide/slide_map.jpg", "slide/slide_macro.jpg", "Index.dat", "Data0000.dat", "slide.mrxs\""]
    {
        assert!(!text.contains(part), "{part} was quarantined: {text}");
    }
    signal(&service, "TERM");
    assert!(service.wait().unwrap().success(), "{}", site.log(0));
}
