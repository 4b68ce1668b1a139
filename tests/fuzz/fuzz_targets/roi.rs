//! A region of interest from a DICOM SEG or RTSTRUCT in the export (frames decoded in any
//! transfer syntax, segments chosen, points placed in a CT grid). The grid is fixed: a 500 mm
//! cube around the scanner's origin at 2 mm, so regions in typical patient coordinates land in
//! it. `read_roi` uses the volume's geometry only, so its voxels are left empty.
#![no_main]
use crlm_models::ct::{CtVolume, GeometryReport, Voxels, roi::read_roi};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn grid() -> &'static CtVolume {
    static GRID: OnceLock<CtVolume> = OnceLock::new();
    GRID.get_or_init(|| CtVolume {
        columns: 250,
        rows: 250,
        slices: 250,
        spacing: [2.0, 2.0, 2.0],
        origin: [-250.0, -250.0, -500.0],
        direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        slice_step: [0.0, 0.0, 2.0],
        hu: Voxels::default(),
        sop_instance_uids: Vec::new(),
        frames: Vec::new(),
        files: Vec::new(),
        report: GeometryReport::default(),
    })
}

fuzz_target!(|data: &[u8]| {
    let path = crlm_fuzz::scratch(data, "dcm");
    if let Ok(h) = crlm_models::dicom::header::read_header(&path, &crlm_fuzz::limits()) {
        let limits = crlm_fuzz::limits();
        let _ = read_roi(&path, &h, grid(), &[], &limits);
        let _ = read_roi(&path, &h, grid(), &["liver".to_string()], &limits);
    }
});
