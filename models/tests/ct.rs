//! CT series to HU volume and NIfTI, on series written by the project's own writer, and on the
//! real public files where ../shared/data exists.

use crlm_models::ct::{load_series, write_nifti};
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
    let min = v.hu.iter().copied().fold(f32::MAX, f32::min);
    let max = v.hu.iter().copied().fold(f32::MIN, f32::max);
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
        let mean_abs: f64 = lossy.hu.iter().zip(&reference.hu).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>()
            / reference.hu.len() as f64;
        // Irreversible JPEG 2000 (SimpleITK decodes it to the same values, see tests/simpleitk.rs).
        assert!(mean_abs > 0.0 && mean_abs < 40.0, "{ct}_J2KI mean abs diff {mean_abs}");
        // JPEG-LS needs the feature; without it the error says so.
        #[cfg(not(feature = "jpeg-ls"))]
        {
            let err = one(&format!("{ct}_JLSL")).unwrap_err();
            assert!(err.to_string().contains("jpeg-ls"), "{err}");
        }
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
        let spec = CtPreprocessSpec { spacing_mm: [2.0, 2.0, 4.0], shape: [10, 8, 5], hu_window: [-400.0, 400.0] };
        let t = preprocess(&v, &spec, Some(roi));
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
        let spec = CtPreprocessSpec { spacing_mm: [1.0, 1.0, 1.0], shape: [120, 120, 4], hu_window: [-100.0, 200.0] };
        let t = preprocess(&v, &spec, None);
        assert_eq!(t.roi, RoiSource::Body);
        assert_eq!(t.data[0], 0.0);
        // The centre is water (40 HU) or contrast liver (110 HU), both inside the window.
        let c = t.data[(2 * 120 + 60) * 120 + 60];
        assert!(c > 0.3 && c < 1.0, "{c}");
    }
}
