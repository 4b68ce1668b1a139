//! The watcher against real files on a real file system: DICOM series, pyramidal TIFFs and
//! clinical files written by the project's own writers into a temporary share.

mod common;
use common::scan_until;
use crlm_config::Config;
use crlm_ingest::Ingestor;
use crlm_models::dicom::{CtSeriesSpec, write_ct_series};
use crlm_models::synth::{SampleCase, clinical_json, write_sample_case};
use crlm_state::{CaseRow, CaseState, SlidesHeld};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Env {
    _dir: tempfile::TempDir,
    share: PathBuf,
    cfg: Config,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut cfg = Config::default();
    cfg.share.path = share.clone();
    cfg.state.path = dir.path().join("state");
    cfg.share.quiet_seconds = 0.3;
    cfg.share.incomplete_timeout_seconds = 0.8;
    cfg.cases.partial_after_seconds = 1.5;
    Env { _dir: dir, share, cfg }
}

fn all_closed(rows: &[CaseRow]) -> bool {
    !rows.is_empty() && rows.iter().all(|r| r.state != CaseState::Waiting)
}

fn quarantined(ing: &Ingestor) -> Vec<(String, String, String)> {
    ing.database().quarantine_rows().unwrap()
}

#[test]
fn complete_case_records_the_series_choice_and_every_rejection() {
    let e = env();
    let case = SampleCase { with_noncontrast_series: true, ..SampleCase::new("PAT-001") };
    write_sample_case(&e.share.join("case-a"), &case).unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 20.0, all_closed);
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.state, CaseState::Complete, "{r:#?}");
    assert!(r.pseudonym.starts_with("P-") && !r.pseudonym.contains("PAT-001"));
    let choice = r.series_choice.as_ref().unwrap();
    assert_eq!(choice["chosen"]["description"], "ABDOMEN PORTAL VENOUS 2.0");
    assert_eq!(choice["chosen"]["slices"], 12);
    let rejected = choice["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0]["reason"].as_str().unwrap().contains("no contrast agent"));
    assert_eq!(r.modalities.slide, SlidesHeld::Found { count: 1 });
    assert!(r.modalities.has_clinical());
    assert_eq!(r.files, 12 + 16 + 2);
}

#[test]
fn missing_slide_proceeds_as_partial_after_the_timeout_and_says_so() {
    let e = env();
    let case = SampleCase { with_slide: false, ..SampleCase::new("PAT-002") };
    write_sample_case(&e.share.join("case-b"), &case).unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let start = Instant::now();
    let rows = scan_until(&mut ing, 20.0, all_closed);
    assert!(start.elapsed().as_secs_f64() >= 1.0, "closed before the partial timeout");
    assert_eq!(rows[0].state, CaseState::Partial);
    assert_eq!(rows[0].reasons, vec!["slide missing and the waiting time ran out".to_string()]);
    assert_eq!(rows[0].modalities.slide, SlidesHeld::Missing);
}

#[test]
fn ready_marker_closes_a_case_at_once_even_with_a_long_quiet_window() {
    let mut e = env();
    e.cfg.share.quiet_seconds = 3600.0;
    let dir = e.share.join("case-r");
    write_sample_case(&dir, &SampleCase::new("PAT-R")).unwrap();
    std::fs::write(dir.join("READY"), b"").unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 5.0, all_closed);
    assert_eq!(rows[0].state, CaseState::Complete);
}

#[test]
fn ineligible_case_is_not_complete_and_gets_a_case_level_quarantine_record() {
    let e = env();
    let case = SampleCase { age: 80, resection: "R1", ..SampleCase::new("PAT-003") };
    write_sample_case(&e.share.join("case-c"), &case).unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 20.0, all_closed);
    assert_eq!(rows[0].state, CaseState::Ineligible);
    assert!(rows[0].reasons.iter().any(|r| r.contains("age 80")));
    assert!(rows[0].reasons.iter().any(|r| r.contains("R1 resection")));
    let q = quarantined(&ing);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1, "case.eligibility");
    let files: Vec<_> = std::fs::read_dir(e.cfg.quarantine_dir()).unwrap().collect();
    assert_eq!(files.len(), 1);
}

/// Every kind of bad input gets its own specific reason and the service keeps going.
#[test]
fn bad_inputs_are_quarantined_with_specific_reasons_and_good_cases_still_complete() {
    let e = env();
    let bad = e.share.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    // Truncated DICOM.
    let spec = CtSeriesSpec::axial("PAT-X", "1.2.9", "1.2.9.1", 1);
    let f = write_ct_series(&bad.join("dcm"), &spec).unwrap().remove(0);
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 500).unwrap();
    // TIFF with an IFD chain that loops.
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    t.extend_from_slice(&1u16.to_le_bytes());
    t.extend_from_slice(&[0, 1, 4, 0, 1, 0, 0, 0, 10, 0, 0, 0]);
    t.extend_from_slice(&8u32.to_le_bytes());
    std::fs::write(bad.join("loop.tif"), &t).unwrap();
    // CSV with a wrong column; JSON with an out-of-range age.
    std::fs::write(bad.join("clin.csv"), "patient_id,age,stage\nPAT-X,60,III\n").unwrap();
    std::fs::write(bad.join("clin.json"), r#"{"patient_id":"PAT-X","age":212}"#).unwrap();
    // Symlink to /etc, a 0-byte file, and something unrecognisable.
    std::os::unix::fs::symlink("/etc/passwd", bad.join("passwd")).unwrap();
    std::fs::write(bad.join("empty.dcm"), b"").unwrap();
    std::fs::write(bad.join("notes.txt"), b"call the lab about this patient").unwrap();
    // A hard link to a file outside the share (the other name could be anywhere on the disk).
    let outside = e.share.parent().unwrap().join("outside.dcm");
    write_ct_series(&e.share.parent().unwrap().join("outside"), &spec).unwrap();
    std::fs::copy(e.share.parent().unwrap().join("outside").join("IM0001.dcm"), &outside).unwrap();
    std::fs::hard_link(&outside, bad.join("linked.dcm")).unwrap();
    // And a good case beside them.
    write_sample_case(&e.share.join("good"), &SampleCase::new("PAT-GOOD")).unwrap();

    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let start = Instant::now();
    let q = loop {
        ing.scan_once().unwrap();
        let q = quarantined(&ing);
        let good_closed = ing.database().cases().unwrap().iter().any(|r| r.state == CaseState::Complete);
        if q.iter().filter(|x| x.0.starts_with("bad/")).count() == 8 && good_closed {
            break q;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "quarantine so far: {q:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |name: &str| q.iter().find(|x| x.0 == format!("bad/{name}")).unwrap_or_else(|| panic!("{name}: {q:#?}"));
    assert_eq!(find("dcm/IM0001.dcm").1, "dicom.complete", "{:?}", find("dcm/IM0001.dcm"));
    assert!(find("dcm/IM0001.dcm").2.contains("truncated, still copying"), "{:?}", find("dcm/IM0001.dcm"));
    assert!(find("loop.tif").2.contains("loops back"), "{:?}", find("loop.tif"));
    assert_eq!(find("clin.csv").1, "clinical.schema_v1");
    assert!(find("clin.csv").2.contains("unknown column `stage`"));
    assert!(find("clin.json").2.contains("212 is out of range"));
    assert_eq!(find("passwd").1, "share.no_symlinks");
    assert_eq!(find("linked.dcm").1, "share.no_hard_links");
    assert!(find("linked.dcm").2.contains("2 hard links"), "{:?}", find("linked.dcm"));
    assert_eq!(find("empty.dcm").1, "file.non_empty");
    assert_eq!(find("notes.txt").1, "file.recognised");
    // Each quarantined file has a reason file naming it and saying what to do.
    let records: Vec<serde_json::Value> = std::fs::read_dir(e.cfg.quarantine_dir())
        .unwrap()
        .map(|f| serde_json::from_slice(&std::fs::read(f.unwrap().path()).unwrap()).unwrap())
        .collect();
    let rec = records.iter().find(|r| r["file"] == "bad/clin.json").unwrap();
    assert_eq!(rec["version"], 1);
    assert!(rec["action"].as_str().unwrap().contains("Correct the clinical file"));
    // Quarantine is not repeated on later scans.
    ing.scan_once().unwrap();
    assert_eq!(quarantined(&ing).len(), q.len());
}

#[test]
fn identical_re_export_makes_no_new_case() {
    let e = env();
    write_sample_case(&e.share.join("case-d"), &SampleCase::new("PAT-004")).unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    scan_until(&mut ing, 20.0, all_closed);
    copy_dir(&e.share.join("case-d"), &e.share.join("case-d-again"));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        ing.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(120));
    }
    let rows = ing.database().cases().unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let dups: i64 = ing.database().count_files("duplicate").unwrap();
    assert_eq!(dups, 12 + 2);
}

/// A multi-file slide (VMS: an index and the JPEG files it names) copied whole into another
/// folder is a re-export: no one file of it tells (two slides may share a part's bytes), the
/// slide as a whole does. A case folder exported again never becomes a case; the same slide
/// beside another patient's CT is not used, and that case says so; a different slide sharing
/// the first's macro image is a slide of its own. Needs OpenSlide (skips saying so without it).
#[test]
fn a_multi_file_slide_copied_whole_into_another_folder_is_a_re_export() {
    use crlm_models::slide::SlideSpec;
    use crlm_models::slide::vms::write_vms;
    let e = env();
    let mut cfg = e.cfg.clone();
    cfg.cases.partial_after_seconds = 600.0;
    let staged = e._dir.path().join("staged");
    let spec = SlideSpec { levels: 3, ..SlideSpec::small(1024, 768) };
    write_vms(&staged.join("a"), "slide", &spec).unwrap();
    let shifted = SlideSpec {
        pixel: std::sync::Arc::new(|x, y| crlm_models::slide::writer::he_like_pixel(x + 37, y)),
        ..spec.clone()
    };
    write_vms(&staged.join("b"), "slide", &shifted).unwrap();
    assert_eq!(
        std::fs::read(staged.join("a/slide_macro.jpg")).unwrap(),
        std::fs::read(staged.join("b/slide_macro.jpg")).unwrap(),
        "the two slides share their macro image's bytes"
    );
    // A case of CT, clinical file and a VMS slide, marked READY once whole.
    let case = |name: &str, patient: &str, slide: &str| {
        let dir = e.share.join(name);
        write_sample_case(&dir, &SampleCase { with_slide: false, ..SampleCase::new(patient) }).unwrap();
        copy_dir(&staged.join(slide), &dir.join("slide"));
        std::fs::write(dir.join("READY"), b"").unwrap();
        dir
    };
    let mut ing = Ingestor::open(&cfg).unwrap();
    let a = case("case-a", "PAT-030", "a");
    let first = scan_until(&mut ing, 30.0, all_closed);
    let q = quarantined(&ing);
    if q.iter().any(|(_, check, _)| check == "slide.format") {
        eprintln!("SKIP: this build or machine has no OpenSlide, which reads VMS slides: {q:?}");
        return;
    }
    assert!(q.is_empty(), "{q:?}");
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!((first[0].state, &first[0].modalities.slide), (CaseState::Complete, &SlidesHeld::Found { count: 1 }));

    // The whole case exported again; the same slide beside another patient's CT; another slide.
    copy_dir(&a, &e.share.join("case-a-again"));
    case("case-c", "PAT-031", "a");
    case("case-b", "PAT-032", "b");
    scan_until(&mut ing, 30.0, |rows| rows.len() >= 3 && all_closed(rows));
    for _ in 0..5 {
        ing.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(120));
    }
    let rows = ing.database().cases().unwrap();
    assert_eq!(rows.len(), 3, "the re-exported folder became a case: {rows:#?}");
    assert!(quarantined(&ing).is_empty(), "{:?}", quarantined(&ing));
    let (copied, own): (Vec<&CaseRow>, Vec<&CaseRow>) =
        rows.iter().partition(|r| r.reasons.iter().any(|x| x.starts_with(crlm_ingest::cases::CROSS_CASE_REASON)));
    assert_eq!(copied.len(), 1, "{rows:#?}");
    assert_eq!(copied[0].modalities.slide, SlidesHeld::Missing, "{rows:#?}");
    assert!(copied[0].reasons.iter().any(|r| r.contains("1 slide file(s)")), "{rows:#?}");
    for r in own {
        assert_eq!((r.state, &r.modalities.slide), (CaseState::Complete, &SlidesHeld::Found { count: 1 }), "{rows:#?}");
    }
    // Every file of the second export, and the copy's index and its three files.
    let exported = walk(&a).into_iter().filter(|p| !p.ends_with("READY")).count();
    assert_eq!(ing.database().count_files("duplicate").unwrap() as usize, exported + 4);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn loose_dicom_at_the_root_is_grouped_by_patient_and_study_and_joined_to_the_root_clinical_csv() {
    let mut e = env();
    e.cfg.cases.require = vec!["ct".into(), "clinical".into()];
    let case = SampleCase::new("PAT-005");
    let spec = CtSeriesSpec::axial("PAT-005", &case.study_uid(), &case.series_uid("pv"), 10);
    write_ct_series(&e.share, &spec).unwrap();
    let other = CtSeriesSpec::axial("PAT-006", "1.2.77", "1.2.77.1", 10);
    write_ct_series(&e.share.join("..").join("tmp-other"), &other).unwrap();
    for (i, f) in std::fs::read_dir(e.share.join("..").join("tmp-other")).unwrap().enumerate() {
        std::fs::rename(f.unwrap().path(), e.share.join(format!("OTHER{i:03}.dcm"))).unwrap();
    }
    std::fs::write(
        e.share.join("clinical.csv"),
        "patient_id,age,M,resection,surgery_date,ct_date\nPAT-005,60,M0,R0,2026-03-20,2026-03-01\nPAT-006,58,M0,R0,2026-03-25,2026-03-02\n",
    )
    .unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 20.0, |r| r.len() == 2 && all_closed(r));
    for r in &rows {
        assert_eq!(r.state, CaseState::Complete, "{r:#?}");
        assert_eq!(r.files, 10);
        assert!(r.modalities.has_clinical());
    }
    assert_ne!(rows[0].pseudonym, rows[1].pseudonym);
}

#[test]
fn clinical_file_naming_another_patient_quarantines_the_case() {
    let e = env();
    let dir = e.share.join("case-mix");
    write_sample_case(&dir, &SampleCase { with_clinical: false, ..SampleCase::new("PAT-007") }).unwrap();
    std::fs::write(dir.join("clinical.json"), clinical_json(&SampleCase::new("PAT-999"))).unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 20.0, all_closed);
    assert_eq!(rows[0].state, CaseState::Quarantined);
    assert!(rows[0].reasons[0].contains("different patient"));
}

#[test]
fn a_slowly_growing_file_is_not_taken_early() {
    let mut e = env();
    e.cfg.share.quiet_seconds = 1.0;
    e.cfg.share.incomplete_timeout_seconds = 60.0;
    let src_dir = e.share.join("..").join("src");
    let spec = CtSeriesSpec::axial("PAT-008", "1.2.8", "1.2.8.1", 1);
    let src = write_ct_series(&src_dir, &spec).unwrap().remove(0);
    let bytes = std::fs::read(&src).unwrap();
    let dest_dir = e.share.join("case-grow");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join("IM0001.dcm");
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let accepted = |ing: &Ingestor| -> i64 { ing.database().count_files("accepted").unwrap() };
    // Write in 8 pieces, 0.4 s apart (each gap shorter than the quiet window), scanning often.
    use std::io::Write;
    let mut f = std::fs::File::create(&dest).unwrap();
    let piece = bytes.len().div_ceil(8);
    for chunk in bytes.chunks(piece) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        for _ in 0..4 {
            ing.scan_once().unwrap();
            assert_eq!(accepted(&ing), 0, "taken while still growing");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(f);
    let start = Instant::now();
    while accepted(&ing) == 0 {
        ing.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert!(start.elapsed() >= Duration::from_millis(700), "taken before the quiet window passed");
}

#[test]
fn a_preallocated_file_is_not_taken_until_its_content_is_written() {
    let mut e = env();
    e.cfg.share.incomplete_timeout_seconds = 60.0;
    let spec = CtSeriesSpec::axial("PAT-009", "1.2.10", "1.2.10.1", 1);
    let src = write_ct_series(&e.share.join("..").join("src9"), &spec).unwrap().remove(0);
    let bytes = std::fs::read(&src).unwrap();
    let dir = e.share.join("case-alloc");
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join("IM0001.dcm");
    // Full length first, as Windows CopyFile does; then the header arrives but not the pixels.
    std::fs::write(&dest, vec![0u8; bytes.len()]).unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let accepted = |ing: &Ingestor| -> i64 { ing.database().count_files("accepted").unwrap() };
    for _ in 0..8 {
        ing.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(accepted(&ing), 0);
    assert!(quarantined(&ing).is_empty());
    // The copy finishes: the real content replaces the zeros and the file is taken.
    std::fs::write(&dest, &bytes).unwrap();
    let start = Instant::now();
    while accepted(&ing) == 0 {
        ing.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn a_restarted_ingestor_resumes_without_losing_or_repeating_a_case() {
    let e = env();
    write_sample_case(&e.share.join("case-e"), &SampleCase::new("PAT-010")).unwrap();
    {
        let mut ing = Ingestor::open(&e.cfg).unwrap();
        ing.scan_once().unwrap(); // files seen, none stable yet
        std::thread::sleep(Duration::from_millis(400));
        ing.scan_once().unwrap(); // files accepted; the case is still settling
    }
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 20.0, all_closed);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, CaseState::Complete);
    assert_eq!(rows[0].files, 12 + 2);
}

#[test]
fn quarantine_move_mode_takes_the_file_out_of_the_share() {
    let mut e = env();
    e.cfg.quarantine.mode = crlm_config::QuarantineMode::Move;
    let dir = e.share.join("case-m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("junk.bin"), b"\x01\x02\x03 not an export").unwrap();
    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let start = Instant::now();
    while dir.join("junk.bin").exists() {
        ing.scan_once().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    let rec_dir =
        std::fs::read_dir(e.cfg.quarantine_dir()).unwrap().map(|d| d.unwrap().path()).find(|p| p.is_dir()).unwrap();
    assert!(rec_dir.join("junk.bin").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A DICOM slide (levels as separate files, level 0 a concatenation, a label) in the case folder
/// counts as one slide; a DICOM slide the box cannot read (a fluorescence image with two optical
/// paths) is quarantined with the reason.
#[test]
fn a_dicom_slide_series_is_one_slide_of_its_case() {
    use crlm_models::slide::{DicomSlideSpec, SlideSpec, write_dicom_slide};
    let e = env();
    let case = SampleCase { with_slide: false, ..SampleCase::new("PAT-WSI") };
    write_sample_case(&e.share.join("case-w"), &case).unwrap();
    let mut spec = DicomSlideSpec::new(
        "ingest-wsi",
        SlideSpec { label_text: Some("PAT-WSI".into()), ..SlideSpec::small(600, 400) },
    );
    spec.split_level0 = true;
    let files = write_dicom_slide(&e.share.join("case-w/slide"), &spec).unwrap();
    assert_eq!(files.len(), 5, "level 0 in two files, levels 1 and 2, the label");
    // Another DICOM slide, written with two optical paths declared.
    let bad = e.share.join("bad-slide");
    let two = write_dicom_slide(
        &bad,
        &DicomSlideSpec::new("two-paths", SlideSpec { levels: 1, ..SlideSpec::small(300, 200) }),
    )
    .unwrap();
    let mut obj = dicom_object::open_file(&two[0]).unwrap();
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::NUMBER_OF_OPTICAL_PATHS,
        dicom_core::VR::UL,
        dicom_core::dicom_value!(U32, [2]),
    ));
    obj.write_to_file(&two[0]).unwrap();

    let mut ing = Ingestor::open(&e.cfg).unwrap();
    let rows = scan_until(&mut ing, 20.0, |rows| rows.iter().any(|r| r.state != CaseState::Waiting));
    let r = rows.iter().find(|r| r.state != CaseState::Waiting).unwrap();
    assert_eq!(r.state, CaseState::Complete, "{r:#?}");
    assert_eq!(r.modalities.slide, SlidesHeld::Found { count: 1 }, "{:#?}", r.modalities);
    let q = quarantined(&ing);
    let rec = q.iter().find(|x| x.0 == "bad-slide/level-0-0.dcm").unwrap_or_else(|| panic!("{q:#?}"));
    assert_eq!(rec.1, "slide.dicom", "{rec:?}");
    assert!(rec.2.contains("2 optical paths"), "{rec:?}");
}
