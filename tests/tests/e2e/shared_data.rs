//! The real public files in ../shared/data through `crlm inspect` and the watcher. Skips with a
//! message where the folder is absent.

use crlm_e2e::{Site, shared_data};
use crlm_models::slide::{SlideSpec, write_pyramidal_tiff};
use crlm_models::synth::{SampleCase, clinical_json};
use std::time::Duration;

fn inspect(path: &std::path::Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(crlm_e2e::crlm_bin()).arg("inspect").arg("--json").arg(path).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn real_dicom_is_recognised_and_broken_files_fail_with_the_right_check() {
    let Some(data) = shared_data() else { return };
    let items = inspect(&data.join("dicom"));
    let by_name = |name: &str| {
        items
            .iter()
            .find(|i| i["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not listed"))
    };
    let series: Vec<_> =
        items.iter().filter(|i| i["path"].as_str().unwrap().contains("abdomen_ce_siemens_20sl")).collect();
    assert_eq!(series.len(), 20);
    for s in &series {
        assert_eq!(s["verdict"], "usable", "{s:#?}");
        assert_eq!(s["TransferSyntaxUID"], "1.2.840.10008.1.2.4.90");
        assert_eq!(s["ContrastBolusAgent"], "APPLIED");
        assert_eq!(s["role"], "ct_image");
    }
    // Every NEMA CT transfer syntax (dual-personality TIFF preambles included) reads as DICOM.
    for ts in ["UNC", "RLE", "JPLL", "JLSL", "JLSN", "J2KR", "J2KI"] {
        let i = by_name(&format!("CT1_{ts}.dcm"));
        assert_eq!((i["kind"].as_str(), i["verdict"].as_str()), (Some("dicom"), Some("usable")), "{i:#?}");
        assert_eq!(i["Rows"], 512);
    }
    assert_eq!(by_name("liver_seg.dcm")["role"], "region_of_interest");
    assert_eq!(by_name("ExplVR_BigEndNoMeta.dcm")["verdict"], "usable");
    assert_eq!(by_name("image_dfl.dcm")["verdict"], "usable");
    assert_eq!(by_name("MAROTECH_CT_JP2Lossy.dcm")["verdict"], "usable");
    for (name, check) in [
        ("MR_truncated.dcm", "dicom.complete"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "dicom.complete"),
        ("rtplan_truncated.dcm", "dicom.complete"),
        ("UN_sequence.dcm", "dicom.header"),
        ("meta_missing_tsyntax.dcm", "dicom.header"),
    ] {
        let i = by_name(name);
        assert_ne!(i["verdict"], "usable", "{name}");
        assert_eq!(i["check"], check, "{name}: {i:#?}");
    }
}

#[test]
fn real_slides_are_read_and_broken_ones_refused() {
    let Some(data) = shared_data() else { return };
    let cmu = &inspect(&data.join("wsi/svs/CMU-1-Small-Region.svs"))[0];
    assert_eq!(cmu["verdict"], "usable");
    assert_eq!(cmu["format"], "aperio_svs");
    assert_eq!(cmu["microns_per_pixel"], 0.499);
    assert_eq!(cmu["levels"][0]["width"], 2220);
    assert_eq!(cmu["associated"], serde_json::json!(["thumbnail", "label", "macro"]));
    let tcga = &inspect(&data.join("wsi/svs/TCGA-CR-7395-01A-01-TS1.svs"))[0];
    assert_eq!(tcga["levels"].as_array().unwrap().len(), 2);
    assert_eq!(tcga["levels"][0]["compression"], 33005); // Aperio JPEG 2000, RGB
    assert_eq!(inspect(&data.join("wsi/svs/broken.svs"))[0]["check"], "file.recognised");
    assert_eq!(
        inspect(&data.join("wsi/synthetic_openslide_fixtures/unopenable.tiff"))[0]["check"],
        "slide.compression"
    );
    // DICOM slides: each level file is usable, one slide of its series (docs/IMAGING.md); a
    // file without Image Type is refused with the reason.
    let dicom_wsi = &inspect(&data.join("wsi/dicom_wsi/cmu-1-small-region/level-0-frames-0-30.dcm"))[0];
    assert_eq!(dicom_wsi["verdict"], "usable", "{dicom_wsi:#?}");
    assert_eq!(dicom_wsi["format"], "dicom_wsi");
    assert_eq!(dicom_wsi["levels"][0]["width"], 2220);
    assert!(dicom_wsi["dicom_series"].as_str().is_some_and(|s| s.len() == 16), "{dicom_wsi:#?}");
    let pathml = &inspect(&data.join("wsi/dicom_wsi/pathml_small_dicom_TCGA-XK-AAJU.dcm"))[0];
    assert_eq!(pathml["check"], "slide.dicom", "{pathml:#?}");
    assert!(pathml["problems"][0].as_str().is_some_and(|r| r.contains("Image Type")), "{pathml:#?}");
}

/// The real contrast CT series (blank UIDs, JPEG 2000) with a slide and clinical file becomes a
/// complete case through the real service.
#[test]
fn real_ct_series_makes_a_complete_case_through_the_watcher() {
    let Some(data) = shared_data() else { return };
    let site = Site::new(0.3);
    let case = site.share.join("real-case");
    std::fs::create_dir_all(&case).unwrap();
    let src = data.join("dicom/ct_series/abdomen_ce_siemens_20sl");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), case.join(f.file_name())).unwrap();
    }
    write_pyramidal_tiff(&case.join("slide.svs"), &SlideSpec::small(512, 512)).unwrap();
    // The series was acquired 2022-12-08: surgery 10 days later keeps the case eligible.
    let mut clinical: serde_json::Value = serde_json::from_str(&clinical_json(&SampleCase::new("REAL-1"))).unwrap();
    clinical["ct_date"] = "2022-12-08".into();
    clinical["surgery_date"] = "2022-12-18".into();
    std::fs::write(case.join("clinical.json"), clinical.to_string()).unwrap();
    let mut child = site.start(0);
    let cases = site.wait_cases(Duration::from_secs(90), |c| {
        c.len() == 1 && c[0]["state"] != "waiting" && c[0]["state"] != "complete"
    });
    crlm_e2e::signal(&child, "TERM");
    child.wait().unwrap();
    let c = &cases[0];
    // A real CT through the demo model: predicted and locked.
    assert_eq!(c["state"], "predicted", "{c:#?}");
    assert!(c["ledger_seq"].is_number(), "{c:#?}");
    assert_eq!(c["series_choice"]["chosen"]["description"], "CT Body 3.0");
    assert_eq!(c["series_choice"]["chosen"]["slices"], 20);
}
