//! Header reading and completeness checks on files made by the project's own writers.

use crlm_models::dicom::{CtSeriesSpec, check_pixel_data, read_header, ts, write_ct_series};
use crlm_models::limits::Limits;
use crlm_models::slide::{SlideFormat, SlideSpec, read_slide_header, write_pyramidal_tiff};
use std::io::Write;

fn truncate(path: &std::path::Path, keep: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(keep).unwrap();
}

#[test]
fn dicom_series_headers_round_trip_in_both_vr_encodings() {
    let dir = tempfile::tempdir().unwrap();
    for (i, syntax) in [ts::EXPLICIT_VR_LE, ts::IMPLICIT_VR_LE].into_iter().enumerate() {
        let mut spec = CtSeriesSpec::axial("PID-1", "1.2.3", &format!("1.2.3.{i}"), 3);
        spec.transfer_syntax = syntax;
        let files = write_ct_series(&dir.path().join(format!("s{i}")), &spec).unwrap();
        let h = read_header(&files[2], &Limits::default()).unwrap();
        assert_eq!(h.transfer_syntax_uid, syntax);
        assert_eq!(h.patient_id.as_deref(), Some("PID-1"));
        assert_eq!(h.modality.as_deref(), Some("CT"));
        assert_eq!(h.image_type, ["ORIGINAL", "PRIMARY", "AXIAL"]);
        assert_eq!(h.rows, Some(64));
        assert_eq!(h.image_position_patient, Some([-22.4, -22.4, 104.0]));
        assert_eq!(h.slice_thickness, Some(2.0));
        let ext = check_pixel_data(&files[2], &h, &Limits::default()).unwrap();
        assert_eq!(ext.value_bytes, 64 * 64 * 2);
        assert_eq!(ext.value_offset + ext.value_bytes, std::fs::metadata(&files[2]).unwrap().len());
    }
}

#[test]
fn truncated_dicom_is_incomplete_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CtSeriesSpec::axial("PID-2", "1.2.4", "1.2.4.1", 1);
    let files = write_ct_series(dir.path(), &spec).unwrap();
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let h = read_header(&files[0], &Limits::default()).unwrap();
    truncate(&files[0], len - 100);
    // The length guard sees the pixel data element run past the end of the file.
    let err = read_header(&files[0], &Limits::default()).unwrap_err();
    assert!(matches!(err, crlm_models::dicom::DicomError::Incomplete(_)), "{err}");
    assert!(err.to_string().contains("declares 8192 bytes but only 8104 remain"), "{err}");
    // The pixel-data check on its own says the same from the header read before truncation.
    let err = check_pixel_data(&files[0], &h, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("truncated or still copying"), "{err}");
}

#[test]
fn dicom_claiming_huge_frames_is_refused_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CtSeriesSpec::axial("PID-3", "1.2.5", "1.2.5.1", 1);
    let files = write_ct_series(dir.path(), &spec).unwrap();
    let limits = Limits { max_dicom_pixel_bytes: 1000, ..Limits::default() };
    let err = read_header(&files[0], &limits).unwrap_err();
    assert!(err.to_string().contains("above the limit"), "{err}");
}

#[test]
fn garbage_is_not_dicom() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.dcm");
    std::fs::File::create(&p).unwrap().write_all(&[7u8; 300]).unwrap();
    assert!(matches!(read_header(&p, &Limits::default()), Err(crlm_models::dicom::DicomError::NotDicom)));
}

#[test]
fn pyramidal_tiff_levels_mpp_and_label_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.svs");
    let spec = SlideSpec::small(1000, 700);
    write_pyramidal_tiff(&p, &spec).unwrap();
    let h = read_slide_header(&p, &Limits::default()).unwrap();
    assert_eq!(h.format, SlideFormat::AperioSvs);
    assert_eq!(h.levels.len(), 3);
    assert_eq!((h.levels[0].width, h.levels[0].height), (1000, 700));
    assert_eq!(h.levels[0].tiles, 4 * 3);
    assert_eq!(h.levels[1].width, 500);
    assert!((h.levels[2].downsample - 4.0).abs() < 0.01);
    assert_eq!(h.microns_per_pixel, Some(0.5));
    assert_eq!(h.objective_power, Some(20.0));
    assert_eq!(h.associated, ["label"]);
    assert_eq!(h.scanner.as_deref(), Some("CRLM-EDGE SYNTHETIC SLIDE WRITER"));
}

#[test]
fn tiff_with_tiles_beyond_end_of_file_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.tif");
    write_pyramidal_tiff(&p, &SlideSpec::small(512, 512)).unwrap();
    // Zero a tile's byte count, as a pre-allocated copy would show: find the TileByteCounts entry.
    let mut bytes = std::fs::read(&p).unwrap();
    let len = bytes.len();
    // Truncation loses the directories: reading must fail with a specific error, not panic.
    bytes.truncate(len / 2);
    std::fs::write(&p, &bytes).unwrap();
    let err = read_slide_header(&p, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("beyond the end of the file") || err.to_string().contains("incomplete"), "{err}");
}

#[test]
fn tiff_ifd_loop_is_broken_not_endless() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("loop.tif");
    // Header pointing at an IFD whose "next" points at itself.
    let mut b = b"II*\0\x08\0\0\0".to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&256u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let err = read_slide_header(&p, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("loops"), "{err}");
}

/// Found by fuzzing (tests/fuzz, target slide): an integer tag written as ASCII (one byte a
/// value) was read as 4-byte integers, past its value: index out of bounds in the TIFF reader.
#[test]
fn an_integer_tag_of_another_type_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ascii.tif");
    for (tag, typ) in [(256u16, 2u16), (257, 2), (296, 2), (322, 2), (324, 2), (325, 1), (256, 5), (256, 12)] {
        let mut b = b"II*\0\x08\0\0\0".to_vec();
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&typ.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"ab\0\0");
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 32]);
        std::fs::write(&p, &b).unwrap();
        let err = read_slide_header(&p, &Limits::default()).unwrap_err();
        assert!(!err.to_string().is_empty(), "tag {tag} type {typ}");
    }
}

/// Found by fuzzing (tests/fuzz, target slide): a tile of 4 billion pixels was accepted and the
/// first tile read asked for 128 GB (an abort, not an error). Tile sides are limited at reading.
#[test]
fn a_tile_too_large_to_decode_is_refused_before_any_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge-tiles.tif");
    // One tiled IFD: 1000 x 1000, tiles 65520 x 65520, one tile of 10 bytes at offset 8.
    let entries: [(u16, u16, u32, u32); 6] =
        [(256, 4, 1, 1000), (257, 4, 1, 1000), (259, 3, 1, 1), (322, 4, 1, 65520), (323, 4, 1, 65520), (324, 4, 1, 8)];
    let mut b = b"II*\0".to_vec();
    b.extend_from_slice(&18u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 10]);
    b.extend_from_slice(&(entries.len() as u16 + 1).to_le_bytes());
    for (tag, typ, n, v) in entries.iter().chain([(325u16, 4u16, 1u32, 10u32)].iter()) {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&typ.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let err = read_slide_header(&p, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("tile width"), "{err}");
}

/// Found by fuzzing (tests/fuzz, target dicom_header, once the fuzz runs had a real allocation
/// cap): bytes that are not a DICOM VR. dicom-rs reads such an element with a 4-byte length,
/// where the guard and the meta-group walk read a 2-byte one, so a few hundred bytes made the
/// header read allocate 775 MB (in the meta group) or 1.3 GB (in the data set). Both are now
/// refused before dicom-rs reads anything; the probe checks that nothing large was allocated.
#[test]
fn an_element_with_an_unknown_vr_is_refused_before_anything_large_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CtSeriesSpec::axial("PID-1", "1.2.3", "1.2.3.9", 1);
    let files = write_ct_series(dir.path(), &spec).unwrap();
    let good = std::fs::read(&files[0]).unwrap();
    read_header(&files[0], &Limits::default()).unwrap();
    let find = |needle: &[u8]| good.windows(needle.len()).position(|w| w == needle).unwrap();
    // (0002,0002) MediaStorageSOPClassUID UI, and (0028,0004) PhotometricInterpretation CS.
    let meta = find(&[0x02, 0x00, 0x02, 0x00, b'U', b'I']);
    let data = find(&[0x28, 0x00, 0x04, 0x00, b'C', b'S']);
    for (at, vr, what) in
        [(meta, [0xE4, b'I'], "meta group"), (meta, *b"QI", "meta group"), (data, *b"CV", "unknown VR")]
    {
        let mut bad = good.clone();
        bad[at + 4..at + 6].copy_from_slice(&vr);
        let p = dir.path().join("bad.dcm");
        std::fs::write(&p, &bad).unwrap();
        crate::alloc_probe::reset();
        let err = read_header(&p, &Limits::default()).unwrap_err();
        let largest = crate::alloc_probe::largest();
        assert!(err.to_string().contains(what), "{vr:?}: {err}");
        assert!(largest < 1 << 20, "{vr:?}: the header read allocated {largest} bytes at once");
    }
}

/// Found by fuzzing (tests/fuzz, target dicom_header): 40 bytes of raw implicit-VR data set that
/// the guard and dicom-rs read differently, where dicom-rs asked for 1.1 GB. The guard now
/// refuses its command-group element (finding 9), and the read cap stands behind it: the read is
/// an error and nothing large is allocated.
#[test]
fn a_raw_data_set_dicom_rs_read_out_of_step_allocates_nothing_large() {
    let bytes: [u8; 40] = [
        0x08, 0x00, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1d, 0x00, 0, 0, 0x01, 0,
        0, 0, 0, 0, 0x08, 0x00, 0x00, 0x12, 0x00, 0x44,
    ];
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("raw.dcm");
    std::fs::write(&p, bytes).unwrap();
    crate::alloc_probe::reset();
    let r = read_header(&p, &Limits::default());
    let largest = crate::alloc_probe::largest();
    assert!(r.is_err(), "{r:?}");
    assert!(largest < 1 << 20, "the header read allocated {largest} bytes at once");
}

/// The read cap (crlm_models::memory), the backstop for the next length the guard does not
/// foresee: inside it, an allocation over the cap is refused (dicom-rs's fallible allocations
/// then fail as a read error); outside it, the same allocation goes ahead. This binary runs the
/// box's allocator, as `crlm` does; without the cap the first assertion fails.
#[test]
fn the_read_cap_refuses_an_allocation_over_it() {
    let inside = crlm_models::memory::with_allocation_cap(1 << 20, || Vec::<u8>::new().try_reserve_exact(64 << 20));
    assert!(inside.is_err(), "64 MB allocated under a 1 MB cap");
    let mut outside = Vec::<u8>::new();
    assert!(outside.try_reserve_exact(64 << 20).is_ok());
}
