//! CT series to HU volume and NIfTI, on series written by the project's own writer, and on the
//! real public files where ../shared/data exists.

use crlm_models::ct::{Voxels, load_series, write_nifti};
use crlm_models::dicom::{CtSeriesSpec, ts, write_ct_series};
use crlm_models::limits::Limits;
use std::path::{Path, PathBuf};

fn hu_of(x: u32, y: u32, z: u32) -> i16 {
    // Distinct in every voxel, within the writer's 12-bit stored range.
    ((x * 7 + y * 13 + z * 101) % 2500) as i16 - 1000
}

fn series(dir: &Path, slices: u32, f: impl FnOnce(&mut CtSeriesSpec)) -> Vec<PathBuf> {
    let mut spec = CtSeriesSpec::axial("P", "1.2.3", "1.2.3.4", slices);
    spec.rows = 16;
    spec.columns = 20;
    spec.hu = std::sync::Arc::new(hu_of);
    f(&mut spec);
    write_ct_series(dir, &spec).unwrap()
}

#[test]
fn slices_are_sorted_by_position_not_instance_number_and_hu_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    // Written (and numbered) in a scrambled order, head-first positions descending along z.
    let files = series(dir.path(), 9, |s| {
        s.write_order = Some(vec![4, 0, 8, 2, 6, 1, 7, 3, 5]);
        s.origin = [-5.0, 10.0, 50.0];
        s.orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    });
    let v = load_series(&files, &Limits::default()).unwrap();
    assert_eq!((v.columns, v.rows, v.slices), (20, 16, 9));
    for z in 0..9 {
        for y in 0..16 {
            for x in 0..20 {
                assert_eq!(v.at(x, y, z), f32::from(hu_of(x as u32, y as u32, z as u32)), "voxel {x},{y},{z}");
            }
        }
    }
    assert_eq!(v.spacing, [0.7, 0.7, 2.0]);
    assert_eq!(v.origin, [-5.0, 10.0, 50.0]);
    assert!(v.report.uniform_spacing);
    assert!(v.report.missing_slices.is_empty() && v.report.warnings.is_empty());
}

#[test]
fn implicit_vr_series_decodes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let a = load_series(&series(&dir.path().join("e"), 4, |_| {}), &Limits::default()).unwrap();
    let b =
        load_series(&series(&dir.path().join("i"), 4, |s| s.transfer_syntax = ts::IMPLICIT_VR_LE), &Limits::default())
            .unwrap();
    assert_eq!(a.hu, b.hu);
}

#[test]
fn a_missing_slice_is_reported_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = series(dir.path(), 10, |_| {});
    files.remove(5);
    let v = load_series(&files, &Limits::default()).unwrap();
    assert_eq!(v.report.missing_slices, vec![(4, 1)]);
    assert!(!v.report.uniform_spacing);
    assert!(v.report.warnings[0].contains("1 slice(s) missing"), "{:?}", v.report.warnings);
}

#[test]
fn duplicate_positions_are_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = series(dir.path(), 5, |_| {});
    let copy = dir.path().join("copy.dcm");
    std::fs::copy(&files[2], &copy).unwrap();
    files.push(copy);
    let v = load_series(&files, &Limits::default()).unwrap();
    assert_eq!(v.slices, 5);
    assert_eq!(v.report.duplicate_positions.len(), 1);
}

#[test]
fn gantry_tilt_is_measured_and_kept_in_the_sform() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = series(&dir.path().join("a"), 1, |_| {});
    // Build a tilted series: each slice origin shifts 0.5 mm in y per 2 mm in z.
    for k in 1..6u32 {
        let f = series(&dir.path().join(format!("t{k}")), 1, |s| {
            s.origin = [-22.4, -22.4 + 0.5 * f64::from(k), 100.0 + 2.0 * f64::from(k)];
            s.series_instance_uid = "1.2.3.4".into();
        });
        // Unique SOP instance per slice.
        let dest = dir.path().join(format!("slice{k}.dcm"));
        std::fs::rename(&f[0], &dest).unwrap();
        files.push(dest);
    }
    let v = load_series(&files, &Limits::default()).unwrap();
    let expected = (0.5f64 / 2.0).atan().to_degrees();
    assert!((v.report.gantry_tilt_degrees - expected).abs() < 0.01, "{}", v.report.gantry_tilt_degrees);
    assert_eq!(v.slice_step, [0.0, 0.5, 2.0]);
    let a = crlm_models::ct::nifti::affine_ras(&v);
    assert_eq!([a[0][2], a[1][2], a[2][2]], [0.0, -0.5, 2.0]);
}

#[test]
fn mixed_sizes_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = series(&dir.path().join("a"), 3, |_| {});
    files.extend(series(&dir.path().join("b"), 1, |s| {
        s.rows = 32;
        s.origin[2] = 300.0;
    }));
    let err = load_series(&files, &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("mixed image sizes"), "{err}");
}

/// Finding 12 (fuzzing, docs/RELIABILITY.md): a 7 KB file claiming BitsAllocated 1 passed the
/// header guard's pixel-byte limit (one bit a voxel) and made the loader allocate 32 times that
/// as f32. A CT image with other than 8 or 16 bits a sample is refused before the volume exists.
#[test]
fn a_ct_image_with_one_bit_a_sample_is_refused_before_the_volume_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(dir.path(), 1, |s| {
        s.rows = 512;
        s.columns = 512;
    });
    let mut bytes = std::fs::read(&files[0]).unwrap();
    // (0028,0100) BitsAllocated US 16 -> 1, explicit VR little endian.
    let tag = [0x28, 0x00, 0x00, 0x01, b'U', b'S', 0x02, 0x00, 0x10, 0x00];
    let at = bytes.windows(tag.len()).position(|w| w == tag).expect("BitsAllocated 16 in the file");
    bytes[at + 8] = 1;
    std::fs::write(&files[0], &bytes).unwrap();
    crate::alloc_probe::reset();
    let err = load_series(&files, &Limits::default()).unwrap_err();
    let largest = crate::alloc_probe::largest();
    assert!(err.to_string().contains("BitsAllocated 1"), "{err}");
    assert!(largest < 512 * 512 * 4, "{largest} bytes allocated for a refused image");
}

/// What the minimal reader below takes from a NIfTI-1 file.
struct Nifti {
    dims: Vec<i16>,
    pixdim: [f32; 4],
    srow: [[f32; 4]; 3],
    datatype: i16,
    qform_code: i16,
    data: Vec<u8>,
}

/// A minimal NIfTI-1 reader for checking what we wrote.
fn read_nifti(path: &Path) -> Nifti {
    let bytes = std::fs::read(path).unwrap();
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out).unwrap();
        out
    } else {
        bytes
    };
    let i16_at = |o: usize| i16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let f32_at = |o: usize| f32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    assert_eq!(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), 348);
    assert_eq!(&bytes[344..348], b"n+1\0");
    let dims: Vec<i16> = (0..4).map(|i| i16_at(40 + 2 * i)).collect();
    let pixdim = [f32_at(76), f32_at(80), f32_at(84), f32_at(88)];
    let mut srow = [[0f32; 4]; 3];
    for (row, off) in srow.iter_mut().zip([280usize, 296, 312]) {
        for (k, v) in row.iter_mut().enumerate() {
            *v = f32_at(off + 4 * k);
        }
    }
    let vox_offset = f32_at(108) as usize;
    Nifti { dims, pixdim, srow, datatype: i16_at(70), qform_code: i16_at(252), data: bytes[vox_offset..].to_vec() }
}

#[test]
fn nifti_has_ras_affine_int16_voxels_and_survives_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(&dir.path().join("s"), 6, |s| s.origin = [-5.0, 10.0, 50.0]);
    let v = load_series(&files, &Limits::default()).unwrap();
    for name in ["ct.nii", "ct.nii.gz"] {
        let out = dir.path().join(name);
        write_nifti(&v, &out).unwrap();
        let Nifti { dims, pixdim, srow, datatype, qform_code, data } = read_nifti(&out);
        assert_eq!(dims, vec![3, 20, 16, 6]);
        assert_eq!(pixdim[0], 1.0, "qfac");
        assert_eq!(&pixdim[1..], &[0.7, 0.7, 2.0]);
        assert_eq!(datatype, 4, "INT16");
        assert_eq!(qform_code, 1);
        // LPS -> RAS: x and y negated.
        assert_eq!(srow[0], [-0.7, 0.0, 0.0, 5.0]);
        assert_eq!(srow[1], [0.0, -0.7, 0.0, -10.0]);
        assert_eq!(srow[2], [0.0, 0.0, 2.0, 50.0]);
        let voxels: Vec<i16> = data.chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(voxels.len(), 20 * 16 * 6);
        assert_eq!(voxels[(3 * 16 + 2) * 20 + 1], hu_of(1, 2, 3));
    }
}

/// Change each written file with dicom-object (the test's own edit of a series the project's
/// writer made).
fn edit(files: &[PathBuf], f: impl Fn(&mut dicom_object::DefaultDicomObject)) {
    for p in files {
        let mut o = dicom_object::open_file(p).unwrap();
        f(&mut o);
        o.write_to_file(p).unwrap();
    }
}

fn put_str(o: &mut dicom_object::DefaultDicomObject, tag: dicom_core::Tag, vr: dicom_core::VR, v: &str) {
    o.put(dicom_core::DataElement::new(tag, vr, dicom_core::PrimitiveValue::from(v)));
}

#[test]
fn whole_hu_load_as_i16_and_a_fractional_rescale_as_f32() {
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let files = series(dir.path(), 3, |_| {});
    let whole = load_series(&files, &Limits::default()).unwrap();
    assert!(matches!(whole.hu, Voxels::Int16(_)), "slope 1, intercept -1024: whole HU");
    // Stored = HU + 1024 as written; now read with slope 0.5 and intercept -512.25.
    edit(&files, |o| {
        put_str(o, tags::RESCALE_SLOPE, dicom_core::VR::DS, "0.5");
        put_str(o, tags::RESCALE_INTERCEPT, dicom_core::VR::DS, "-512.25");
    });
    let half = load_series(&files, &Limits::default()).unwrap();
    assert!(matches!(half.hu, Voxels::Float32(_)), "a fractional rescale is not whole HU");
    for z in 0..3 {
        for y in 0..16 {
            for x in 0..20 {
                let stored = f32::from(hu_of(x as u32, y as u32, z as u32)) + 1024.0;
                assert_eq!(half.at(x, y, z), stored * 0.5 - 512.25, "voxel {x},{y},{z}");
            }
        }
    }
}

#[test]
fn a_value_beyond_i16_sends_the_series_to_f32_unchanged() {
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let files = series(dir.path(), 2, |_| {});
    // All 16 bits stored, and the last file's first sample 65535: 64511 HU after the intercept.
    let last = files.last().unwrap().clone();
    edit(&files, |o| {
        o.put(dicom_core::DataElement::new(
            tags::BITS_STORED,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(16u16),
        ));
        o.put(dicom_core::DataElement::new(
            tags::HIGH_BIT,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(15u16),
        ));
    });
    edit(std::slice::from_ref(&last), |o| {
        let mut px = o.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
        px[0] = 0xff;
        px[1] = 0xff;
        o.put(dicom_core::DataElement::new(tags::PIXEL_DATA, dicom_core::VR::OW, dicom_core::PrimitiveValue::from(px)));
    });
    let v = load_series(&files, &Limits::default()).unwrap();
    assert!(matches!(v.hu, Voxels::Float32(_)), "64511 HU does not fit in i16");
    let z = v.files.iter().position(|f| *f == last).unwrap();
    assert_eq!(v.at(0, 0, z), 64511.0);
    assert_eq!(v.at(1, 0, z), f32::from(hu_of(1, 0, z as u32)));
    assert_eq!(v.at(0, 0, 1 - z), f32::from(hu_of(0, 0, (1 - z) as u32)));
}

#[test]
fn an_i16_volume_writes_the_same_nifti_as_its_f32_copy() {
    let dir = tempfile::tempdir().unwrap();
    let v = load_series(&series(&dir.path().join("s"), 5, |_| {}), &Limits::default()).unwrap();
    assert!(matches!(v.hu, Voxels::Int16(_)));
    let mut f = v.clone();
    f.hu = Voxels::Float32(v.hu.to_f32());
    write_nifti(&v, &dir.path().join("i16.nii")).unwrap();
    write_nifti(&f, &dir.path().join("f32.nii")).unwrap();
    let (a, b) =
        (std::fs::read(dir.path().join("i16.nii")).unwrap(), std::fs::read(dir.path().join("f32.nii")).unwrap());
    assert_eq!(a.len(), 352 + 20 * 16 * 5 * 2);
    assert!(a == b, "the two NIfTI files differ");
}

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dicom");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: ../shared/data is absent");
        None
    }
}

#[test]
fn real_jpeg2000_abdomen_series_decodes_to_plausible_hu() {
    let Some(d) = shared() else { return };
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(d.join("ct_series/abdomen_ce_siemens_20sl")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let v = load_series(&files, &Limits::default()).unwrap();
    assert_eq!((v.columns, v.rows, v.slices), (512, 512, 20));
    assert!(v.report.uniform_spacing, "{:?}", v.report);
    assert!((v.spacing[2] - 2.0).abs() < 1e-6);
    // Air outside the body, soft tissue and contrast-enhanced vessels inside.
    let min = v.hu.to_f32().iter().copied().fold(f32::MAX, f32::min);
    let max = v.hu.to_f32().iter().copied().fold(f32::MIN, f32::max);
    assert!(min <= -1000.0 && max > 300.0, "HU range {min}..{max}");
    let centre = v.at(256, 256, 10);
    assert!((-200.0..400.0).contains(&centre), "centre voxel {centre}");
}

#[test]
fn nema_ct_lossless_syntaxes_decode_to_the_uncompressed_reference() {
    let Some(d) = shared() else { return };
    let one = |name: &str| load_series(&[d.join(format!("ct_single/nema_wg04/{name}.dcm"))], &Limits::default());
    for ct in ["CT1", "CT2"] {
        let reference = one(&format!("{ct}_UNC")).unwrap();
        for syntax in ["RLE", "JPLL", "J2KR"] {
            let v = one(&format!("{ct}_{syntax}")).unwrap_or_else(|e| panic!("{ct}_{syntax}: {e}"));
            assert_eq!(v.hu, reference.hu, "{ct}_{syntax} differs from {ct}_UNC");
        }
        // Lossy JPEG 2000 stays close.
        let lossy = one(&format!("{ct}_J2KI")).unwrap();
        let mean_abs: f64 =
            lossy.hu.to_f32().iter().zip(&reference.hu.to_f32()).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>()
                / reference.hu.len() as f64;
        // Irreversible JPEG 2000 (SimpleITK decodes it to the same values, see tests/simpleitk.rs).
        assert!(mean_abs > 0.0 && mean_abs < 40.0, "{ct}_J2KI mean abs diff {mean_abs}");
        // JPEG-LS lossless (CharLS, in every build): identical (near-lossless: see mod jpeg_ls).
        let jlsl = one(&format!("{ct}_JLSL")).unwrap_or_else(|e| panic!("{ct}_JLSL: {e}"));
        assert_eq!(jlsl.hu, reference.hu, "{ct}_JLSL differs from {ct}_UNC");
    }
}

mod preprocessing {
    use super::*;
    use crlm_models::ct::preprocess::{CtPreprocessSpec, RoiSource, body_box, preprocess};

    fn ramp(x: u32, _y: u32, z: u32) -> i16 {
        (x * 10 + z * 3) as i16 - 300
    }

    #[test]
    fn resampling_reproduces_a_linear_field_exactly_and_normalises_to_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let files = series(dir.path(), 10, |s| {
            s.hu = std::sync::Arc::new(ramp);
            s.pixel_spacing = [1.0, 1.0];
            s.slice_spacing = 2.0;
        });
        let v = load_series(&files, &Limits::default()).unwrap();
        // Whole volume as ROI, 2 mm in-plane, 4 mm between slices: every other voxel, every other slice.
        let roi = crlm_models::ct::preprocess::IndexBox { min: [0, 0, 0], max: [19, 15, 9] };
        let spec = CtPreprocessSpec {
            spacing_mm: [2.0, 2.0, 4.0],
            shape: [10, 8, 5],
            hu_window: [-400.0, 400.0],
            roi_labels: vec![],
        };
        let t = preprocess(&v, &spec, Some((roi, RoiSource::Segmentation)));
        assert_eq!(t.shape, [10, 8, 5]);
        assert_eq!(t.data.len(), 10 * 8 * 5);
        assert_eq!(t.roi, RoiSource::Segmentation);
        for k in 0..5 {
            for i in 0..10 {
                // Output voxel i sits at volume x = 9.5 + (i - 4.5) * 2 = 2i + 0.5; z = 4.5 + (k - 2) * 2.
                let (x, z) = (2.0 * i as f64 + 0.5, 4.5 + (k as f64 - 2.0) * 2.0);
                let hu = (x * 10.0 + z * 3.0 - 300.0) as f32;
                let want = ((hu.clamp(-400.0, 400.0) + 400.0) / 800.0).clamp(0.0, 1.0);
                let got = t.data[(k * 8 + 3) * 10 + i];
                assert!((got - want).abs() < 1e-5, "voxel {i},{k}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn the_body_box_finds_the_phantom_and_outside_is_air() {
        let dir = tempfile::tempdir().unwrap();
        // The default phantom: a water cylinder of radius 28 px centred at (32, 32) in a 64 x 64 image.
        let files = series(dir.path(), 6, |s| {
            s.rows = 64;
            s.columns = 64;
            s.hu = std::sync::Arc::new(crlm_models::dicom::writer::phantom_hu);
        });
        let v = load_series(&files, &Limits::default()).unwrap();
        let b = body_box(&v).unwrap();
        // Water where (x - 32)^2 + (y - 32)^2 <= 28^2: x and y from 4 to 60.
        assert_eq!((b.min[0], b.max[0]), (4, 60));
        assert_eq!((b.min[1], b.max[1]), (4, 60));
        // A box larger than the scan: its edges are air (0 after the window).
        let spec = CtPreprocessSpec {
            spacing_mm: [1.0, 1.0, 1.0],
            shape: [120, 120, 4],
            hu_window: [-100.0, 200.0],
            roi_labels: vec![],
        };
        let t = preprocess(&v, &spec, None);
        assert_eq!(t.roi, RoiSource::Body);
        assert_eq!(t.data[0], 0.0);
        // The centre is water (40 HU) or contrast liver (110 HU), both inside the window.
        let c = t.data[(2 * 120 + 60) * 120 + 60];
        assert!(c > 0.3 && c < 1.0, "{c}");
    }
}

mod enhanced_ct {
    use super::*;
    use crlm_models::dicom::{read_header, write_enhanced_ct};

    #[test]
    fn a_multi_frame_file_loads_like_the_same_series_in_single_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CtSeriesSpec::axial("P", "1.2.3", "1.2.3.4", 7);
        spec.rows = 16;
        spec.columns = 20;
        spec.hu = std::sync::Arc::new(hu_of);
        // Frames stored out of order: only the Plane Position functional groups place them.
        spec.write_order = Some(vec![3, 0, 6, 1, 5, 2, 4]);
        spec.origin = [-5.0, 10.0, 50.0];
        let single = write_ct_series(&dir.path().join("single"), &spec).unwrap();
        let multi = dir.path().join("enhanced.dcm");
        write_enhanced_ct(&multi, &spec).unwrap();

        let h = read_header(&multi, &Limits::default()).unwrap();
        assert_eq!(h.number_of_frames, Some(7));
        assert_eq!(h.frames.len(), 7);
        assert_eq!(h.image_orientation_patient, Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), "shared orientation");

        let a = load_series(&single, &Limits::default()).unwrap();
        let b = load_series(std::slice::from_ref(&multi), &Limits::default()).unwrap();
        assert_eq!((b.columns, b.rows, b.slices), (20, 16, 7));
        assert_eq!(b.hu, a.hu, "voxels");
        assert_eq!((b.origin, b.spacing, b.direction), (a.origin, a.spacing, a.direction));
        assert_eq!(b.frames, vec![2, 4, 6, 1, 7, 5, 3], "1-based frame of each sorted slice");
        assert!(b.report.warnings.is_empty(), "{:?}", b.report.warnings);
    }

    #[test]
    fn frames_without_plane_positions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = CtSeriesSpec::axial("P", "1.2.3", "1.2.3.4", 3);
        let path = dir.path().join("enhanced.dcm");
        write_enhanced_ct(&path, &spec).unwrap();
        let mut h = read_header(&path, &Limits::default()).unwrap();
        h.frames.truncate(2);
        let err = crlm_models::ct::volume::load_series_with_headers(&[path], &[h], &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("3 frames but 2 per-frame functional groups"), "{err}");
    }

    #[test]
    fn real_enhanced_ct_decodes_with_its_functional_groups() {
        let Some(d) = shared() else { return };
        let v = load_series(&[d.join("enhanced/eCT_Supplemental.dcm")], &Limits::default()).unwrap();
        assert_eq!((v.columns, v.rows, v.slices), (512, 512, 2));
        assert!((v.spacing[0] - 0.388672).abs() < 1e-9 && (v.spacing[2] - 10.0).abs() < 1e-9, "{:?}", v.spacing);
        // Orientation (-1,0,0 / 0,1,0): the normal points to -z, so frame 2 (z -149) comes first.
        assert_eq!(v.frames, vec![2, 1]);
        assert_eq!(v.origin, [99.5, -301.5, -149.0]);
        // Values checked with pydicom (pixel_array - 1024, the shared Pixel Value Transformation).
        let mean =
            |z: usize| v.hu.range_f32(z * 512 * 512, 512 * 512).iter().map(|x| f64::from(*x)).sum::<f64>() / 262144.0;
        assert!((mean(0) - -648.544506072998).abs() < 1e-6, "{}", mean(0));
        assert!((mean(1) - -639.379322052002).abs() < 1e-6, "{}", mean(1));
        assert_eq!(v.at(256, 256, 1), 81.0);
    }
}

mod region_of_interest {
    use super::*;
    use crlm_models::ct::preprocess::{IndexBox, RoiSource};
    use crlm_models::ct::roi::read_roi;
    use crlm_models::dicom::{read_header, write_segmentation, write_structure_set};

    fn spec() -> CtSeriesSpec {
        let mut spec = CtSeriesSpec::axial("P", "1.2.3", "1.2.3.4", 10);
        spec.rows = 30;
        spec.columns = 40;
        spec.hu = std::sync::Arc::new(hu_of);
        spec
    }

    #[test]
    fn a_seg_gives_the_box_of_its_set_voxels() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec();
        let v = load_series(&write_ct_series(&dir.path().join("ct"), &spec).unwrap(), &Limits::default()).unwrap();
        let seg = dir.path().join("seg.dcm");
        // An L-shaped region: the box is the union over slices, not one slice's extent.
        write_segmentation(&seg, &spec, "Liver", &|x, y, z| {
            (z == 3 && (5..=9).contains(&x) && (20..=25).contains(&y)) || (z == 6 && (12..=30).contains(&x) && y == 2)
        })
        .unwrap();
        let h = read_header(&seg, &Limits::default()).unwrap();
        // 40 x 30 = 1200 bits a frame, 2 frames: not a multiple of 8 per frame would still be
        // packed; here the mask itself is checked bit for bit through the box.
        let roi = read_roi(&seg, &h, &v, &[], &Limits::default()).unwrap();
        assert_eq!(roi.bbox, IndexBox { min: [5, 2, 3], max: [30, 25, 6] });
        assert_eq!(
            (roi.source, roi.labels.clone(), roi.clipped),
            (RoiSource::Segmentation, vec!["Liver".into()], false)
        );
        // Chosen by label, case-insensitively; a label the file lacks is a clear error.
        assert_eq!(read_roi(&seg, &h, &v, &["liver".into()], &Limits::default()).unwrap().bbox, roi.bbox);
        let err = read_roi(&seg, &h, &v, &["tumour".into()], &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("no segment named tumour (the file has: Liver)"), "{err}");
    }

    /// Found by fuzzing (target `roi`): a 2.5 KB SEG claiming 65,535 x 65,535-pixel frames made
    /// the reader allocate and scan a 4 GB mask. The limits are checked before anything is
    /// decoded: the frame as a mask, and the decoded pixel data.
    #[test]
    fn a_seg_over_the_limits_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec();
        let v = load_series(&write_ct_series(&dir.path().join("ct"), &spec).unwrap(), &Limits::default()).unwrap();
        let seg = dir.path().join("seg.dcm");
        write_segmentation(&seg, &spec, "Liver", &|x, _, _| x < 4).unwrap();
        let h = read_header(&seg, &Limits::default()).unwrap();
        let mut huge = h.clone();
        (huge.rows, huge.columns) = (Some(65535), Some(65535));
        let err = read_roi(&seg, &huge, &v, &[], &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("refusing before allocating"), "{err}");
        // One such frame: its bits (537 MB) are within the 2 GiB limit, its mask (4.3 GB) is not.
        huge.number_of_frames = Some(1);
        let err = read_roi(&seg, &huge, &v, &[], &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("65535x65535 frame is over limits.max_dicom_pixel_bytes (2147483648) as a mask"), "{err}");
        let one_frame = Limits { max_dicom_frames: 1, ..Limits::default() };
        assert!(read_roi(&seg, &h, &v, &[], &one_frame).unwrap_err().to_string().contains("NumberOfFrames"));
        assert!(read_roi(&seg, &h, &v, &[], &Limits::default()).is_ok());
    }

    #[test]
    fn frames_that_do_not_start_on_a_byte_are_unpacked_right() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec();
        // 13 x 7 = 91 bits a frame: every frame after the first starts mid-byte.
        spec.columns = 13;
        spec.rows = 7;
        let v = load_series(&write_ct_series(&dir.path().join("ct"), &spec).unwrap(), &Limits::default()).unwrap();
        let seg = dir.path().join("seg.dcm");
        write_segmentation(&seg, &spec, "Lesion", &|x, y, z| {
            (z == 1 && x == 0 && y == 0) || (z == 2 && x == 12 && y == 6)
        })
        .unwrap();
        let h = read_header(&seg, &Limits::default()).unwrap();
        let roi = read_roi(&seg, &h, &v, &[], &Limits::default()).unwrap();
        assert_eq!(roi.bbox, IndexBox { min: [0, 0, 1], max: [12, 6, 2] });
    }

    #[test]
    fn an_rtstruct_gives_the_box_of_its_contours_and_clipping_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec();
        let v = load_series(&write_ct_series(&dir.path().join("ct"), &spec).unwrap(), &Limits::default()).unwrap();
        // Voxel (x, y, z) is at origin + (0.7 x, 0.7 y, 2 z) for this axial series.
        let at =
            |x: f64, y: f64, z: f64| [spec.origin[0] + 0.7 * x, spec.origin[1] + 0.7 * y, spec.origin[2] + 2.0 * z];
        let rt = dir.path().join("rt.dcm");
        write_structure_set(
            &rt,
            &spec,
            &[
                ("Liver", vec![at(4.0, 5.0, 2.0), at(20.0, 5.0, 2.0), at(20.0, 18.0, 2.0), at(4.0, 18.0, 2.0)]),
                ("Body", vec![at(-10.0, 0.0, 0.0), at(39.0, 0.0, 0.0), at(39.0, 29.0, 9.0)]),
            ],
        )
        .unwrap();
        let h = read_header(&rt, &Limits::default()).unwrap();
        let liver = read_roi(&rt, &h, &v, &["LIVER".into()], &Limits::default()).unwrap();
        assert_eq!(liver.bbox, IndexBox { min: [4, 5, 2], max: [20, 18, 2] });
        assert_eq!((liver.source, liver.clipped), (RoiSource::StructureSet, false));
        let body = read_roi(&rt, &h, &v, &["Body".into()], &Limits::default()).unwrap();
        assert_eq!(body.bbox, IndexBox { min: [0, 0, 0], max: [39, 29, 9] });
        assert!(body.clipped, "a contour 10 voxels left of the volume");
    }

    #[test]
    fn a_region_outside_the_volume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec();
        let v = load_series(&write_ct_series(&dir.path().join("ct"), &spec).unwrap(), &Limits::default()).unwrap();
        let rt = dir.path().join("rt.dcm");
        write_structure_set(&rt, &spec, &[("Far", vec![[500.0, 500.0, 900.0], [510.0, 500.0, 900.0]])]).unwrap();
        let h = read_header(&rt, &Limits::default()).unwrap();
        let err = read_roi(&rt, &h, &v, &[], &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("lies outside the CT volume"), "{err}");
    }

    #[test]
    fn real_dcmqi_liver_seg_in_every_encoding_gives_the_same_box() {
        let Some(d) = shared() else { return };
        let d = d.join("ct_series/dcmqi_ct3slice");
        let files: Vec<PathBuf> = ["01", "02", "03"].iter().map(|n| d.join(format!("{n}.dcm"))).collect();
        let v = load_series(&files, &Limits::default()).unwrap();
        // Expected from pydicom's pixel_array: rows 145..366, columns 79..350 over the three
        // frames, which sit at z -128.69, -127.69, -126.69 (volume slices 0, 1, 2).
        let want = IndexBox { min: [79, 145, 0], max: [350, 366, 2] };
        for name in
            ["liver_seg", "liver_seg_nonbyte_aligned", "liver_seg_rle", "liver_seg_j2k", "liver_seg_deflate_frame"]
        {
            let path = d.join(format!("{name}.dcm"));
            let h = read_header(&path, &Limits::default()).unwrap();
            assert_eq!(
                h.frame_of_reference_uid,
                crlm_models::dicom::read_header(&files[0], &Limits::default()).unwrap().frame_of_reference_uid
            );
            match read_roi(&path, &h, &v, &["Liver".into()], &Limits::default()) {
                Ok(roi) => assert_eq!(roi.bbox, want, "{name}"),
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
}

mod jpeg_extended_12bit {
    use super::*;
    use crate::dcmtk::{dcmtk, run};

    /// A CT series written by the project, compressed by DCMTK to 12-bit JPEG Extended (lossy),
    /// loads to the same HU as DCMTK's own decompression of those files, within one HU (IJG's
    /// integer inverse DCT against our exact float one).
    #[test]
    fn a_12bit_jpeg_series_decodes_like_dcmtk() {
        if !dcmtk("dcmcjpeg") || !dcmtk("dcmdjpeg") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let originals = series(&dir.path().join("native"), 4, |s| {
            s.rows = 40;
            s.columns = 36; // not a multiple of 8: partial blocks at the edges
        });
        let (mut jpeg, mut back) = (Vec::new(), Vec::new());
        for (i, f) in originals.iter().enumerate() {
            let j = dir.path().join(format!("j{i}.dcm"));
            let b = dir.path().join(format!("b{i}.dcm"));
            run("dcmcjpeg", &["+ee".as_ref(), "+un".as_ref(), f.as_os_str(), j.as_os_str()]);
            run("dcmdjpeg", &[j.as_os_str(), b.as_os_str()]);
            jpeg.push(j);
            back.push(b);
        }
        let h = crlm_models::dicom::read_header(&jpeg[0], &Limits::default()).unwrap();
        assert_eq!(h.transfer_syntax_uid, "1.2.840.10008.1.2.4.51");
        let ours = load_series(&jpeg, &Limits::default()).unwrap();
        let theirs = load_series(&back, &Limits::default()).unwrap();
        let original = load_series(&originals, &Limits::default()).unwrap();
        let max_diff = ours.hu.to_f32().iter().zip(&theirs.hu.to_f32()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_diff <= 1.0, "ours vs dcmdjpeg: max |diff| {max_diff} HU");
        let equal = ours.hu.to_f32().iter().zip(&theirs.hu.to_f32()).filter(|(a, b)| a == b).count();
        eprintln!("12-bit JPEG: max |ours - dcmdjpeg| {max_diff} HU, {equal} of {} voxels identical", ours.hu.len());
        assert!(equal * 10 >= ours.hu.len() * 9, "only {equal} of {} voxels identical", ours.hu.len());
        // Lossy, but close to what was compressed.
        let mean_loss =
            ours.hu.to_f32().iter().zip(&original.hu.to_f32()).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>()
                / ours.hu.len() as f64;
        assert!(mean_loss > 0.0 && mean_loss < 30.0, "mean loss {mean_loss} HU");

        // Damaged codestreams give an error or an image, never a panic.
        let obj = dicom_object::open_file(&jpeg[0]).unwrap();
        let stream = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap().value().fragments().unwrap().concat();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..500 {
            let mut damaged = stream.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % damaged.len() as u64) as usize;
                damaged[at] = (seed >> 32) as u8;
            }
            damaged.truncate(damaged.len() - (seed % 64) as usize);
            let _ = crlm_models::dicom::jpeg12::decode(&damaged, 1 << 20);
        }
    }

    /// The public 12-bit JPEG Extended file (pydicom's test set; Pillow cannot decode it): our
    /// decoder against DCMTK's, sample by sample.
    #[test]
    fn the_public_12bit_file_matches_dcmtk() {
        let Some(d) = shared() else { return };
        if !dcmtk("dcmdjpeg") {
            return;
        }
        let src = d.join("pydicom_test_files/JPGExtended.dcm");
        let tmp = tempfile::tempdir().unwrap();
        let back = tmp.path().join("back.dcm");
        run("dcmdjpeg", &[src.as_os_str(), back.as_os_str()]);
        let obj = dicom_object::open_file(&src).unwrap();
        let pixel = obj.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap();
        let stream = pixel.value().fragments().unwrap().concat();
        let img = crlm_models::dicom::jpeg12::decode(&stream, 1 << 24).unwrap();
        assert_eq!((img.width, img.height), (256, 1024));
        let reference = dicom_object::open_file(&back).unwrap();
        let want: Vec<u16> =
            reference.element(dicom_dictionary_std::tags::PIXEL_DATA).unwrap().to_multi_int::<u16>().unwrap();
        assert_eq!(want.len(), img.samples.len());
        let max_diff = img.samples.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        let equal = img.samples.iter().zip(&want).filter(|(a, b)| a == b).count();
        eprintln!("JPGExtended.dcm: max |ours - dcmdjpeg| {max_diff}, {equal} of {} samples identical", want.len());
        assert!(max_diff <= 1, "max |diff| {max_diff}");
    }
}

/// A JPEG stream's frame header claiming more pixels than the image (fuzzing finding 13,
/// docs/RELIABILITY.md): jpeg-decoder sizes its output from the frame header alone, so the
/// 210 KB file the fuzzer made asked for 8.5 GB. Every JPEG and JPEG-LS stream is now checked
/// against Rows x Columns before any decoder sees it.
mod jpeg_frame_header {
    use super::*;
    use crate::dcmtk::{dcmtk, run};

    #[test]
    fn a_lossless_jpeg_frame_larger_than_its_image_is_refused_before_decoding() {
        if !dcmtk("dcmcjpeg") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let originals = series(&dir.path().join("native"), 1, |s| {
            s.rows = 40;
            s.columns = 36;
        });
        let jpeg = dir.path().join("lossless.dcm");
        run("dcmcjpeg", &["+e1".as_ref(), originals[0].as_os_str(), jpeg.as_os_str()]);
        let h = crlm_models::dicom::read_header(&jpeg, &Limits::default()).unwrap();
        assert_eq!(h.transfer_syntax_uid, "1.2.840.10008.1.2.4.70");
        let original = load_series(&originals, &Limits::default()).unwrap();
        assert_eq!(load_series(std::slice::from_ref(&jpeg), &Limits::default()).unwrap().hu, original.hu);

        // The frame header (SOF3) after the stream's start now claims 65,535 x 65,535 pixels.
        let mut bytes = std::fs::read(&jpeg).unwrap();
        let soi = bytes.windows(3).position(|w| w == [0xFF, 0xD8, 0xFF]).unwrap();
        let sof = soi + bytes[soi..].windows(2).position(|w| w == [0xFF, 0xC3]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0xFF; 4]);
        std::fs::write(&jpeg, &bytes).unwrap();
        let e = load_series(&[jpeg], &Limits::default()).unwrap_err().to_string();
        assert!(e.contains("the JPEG frame header says 65535x65535, the image is 36x40"), "{e}");
    }
}

/// JPEG-LS (CharLS, in every build) against DCMTK's own JPEG-LS codec (dcmcjpls/dcmdjpls): the
/// NEMA files and a series of the project's writer transcoded lossless and near-lossless.
mod jpeg_ls {
    use super::*;
    use crate::dcmtk::{dcmtk, run};

    #[test]
    fn nema_jpeg_ls_files_decode_exactly_as_dcmdjpls_does() {
        let Some(d) = shared() else { return };
        if !dcmtk("dcmdjpls") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for name in ["CT1_JLSL", "CT1_JLSN", "CT2_JLSL", "CT2_JLSN"] {
            let src = d.join(format!("ct_single/nema_wg04/{name}.dcm"));
            let back = dir.path().join(format!("{name}.dcm"));
            run("dcmdjpls", &[src.as_os_str(), back.as_os_str()]);
            let ours = load_series(&[src], &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let theirs = load_series(&[back], &Limits::default()).unwrap();
            assert_eq!(ours.hu, theirs.hu, "{name}: ours differs from dcmdjpls");
        }
    }

    #[test]
    fn a_series_transcoded_by_dcmcjpls_decodes_exactly_as_dcmdjpls_does() {
        if !dcmtk("dcmcjpls") || !dcmtk("dcmdjpls") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let originals = series(&dir.path().join("native"), 3, |s| {
            s.rows = 40;
            s.columns = 37;
        });
        let original = load_series(&originals, &Limits::default()).unwrap();
        for (mode, uid) in [("+el", "1.2.840.10008.1.2.4.80"), ("+en", "1.2.840.10008.1.2.4.81")] {
            let (mut jls, mut back) = (Vec::new(), Vec::new());
            for (i, f) in originals.iter().enumerate() {
                let j = dir.path().join(format!("{mode}-j{i}.dcm"));
                let b = dir.path().join(format!("{mode}-b{i}.dcm"));
                run("dcmcjpls", &[mode.as_ref(), f.as_os_str(), j.as_os_str()]);
                run("dcmdjpls", &[j.as_os_str(), b.as_os_str()]);
                jls.push(j);
                back.push(b);
            }
            let h = crlm_models::dicom::read_header(&jls[0], &Limits::default()).unwrap();
            assert_eq!(h.transfer_syntax_uid, uid, "{mode}");
            let ours = load_series(&jls, &Limits::default()).unwrap();
            let theirs = load_series(&back, &Limits::default()).unwrap();
            assert_eq!(ours.hu, theirs.hu, "{mode}: ours differs from dcmdjpls");
            let worst =
                ours.hu.to_f32().iter().zip(&original.hu.to_f32()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            // Lossless is lossless; near-lossless stays within DCMTK's default NEAR of 2.
            let allowed = if mode == "+el" { 0.0 } else { 2.0 };
            assert!(worst <= allowed, "{mode}: worst |decoded - original| {worst}");
        }
    }
}
