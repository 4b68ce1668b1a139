//! Writes DICOM whole-slide series (VL Whole Slide Microscopy Image, one file per level, a label
//! instance): fixtures for the DICOM slide reader, checked against OpenSlide 4 in the tests.
//! Frames are JPEG baseline (YCbCr 4:2:2, Photometric YBR_FULL_422, as DICOM asks of lossy JPEG)
//! or uncompressed RGB; TILED_FULL, or TILED_SPARSE with per-frame positions in reverse order
//! and background tiles left out (as scanners do); level 0 optionally as a two-file
//! concatenation.

use super::SlideError;
use super::writer::SlideSpec;
use crate::dicom::writer::{item, put_seq, put_str, put_u16};
use crate::dicom::{sop_class, ts, uid_from};
use dicom_core::value::{PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use std::path::{Path, PathBuf};

/// What DICOM slide to write: the pixels and pyramid of `slide`, and how the files are laid out.
#[derive(Clone)]
pub struct DicomSlideSpec {
    pub slide: SlideSpec,
    /// Seeds the series' UIDs.
    pub name: String,
    /// TILED_SPARSE: per-frame positions, frames in reverse order, all-white tiles left out.
    pub sparse: bool,
    /// Level 0 as a concatenation of two files.
    pub split_level0: bool,
}

impl DicomSlideSpec {
    pub fn new(name: &str, slide: SlideSpec) -> Self {
        DicomSlideSpec { slide, name: name.to_string(), sparse: false, split_level0: false }
    }
}

fn put_u32(o: &mut InMemDicomObject, tag: dicom_core::Tag, v: u32) {
    o.put(DataElement::new(tag, VR::UL, dicom_value!(U32, [v])));
}

fn put_i32(o: &mut InMemDicomObject, tag: dicom_core::Tag, v: i32) {
    o.put(DataElement::new(tag, VR::SL, dicom_value!(I32, [v])));
}

fn enc(e: impl std::fmt::Display) -> SlideError {
    SlideError::Encode(e.to_string())
}

/// One frame (tile) of a level: `tile` x `tile` RGB, white beyond the level.
fn tile_rgb(spec: &SlideSpec, ds: u32, w: u32, h: u32, tx: u32, ty: u32) -> Vec<u8> {
    let t = spec.tile;
    let mut rgb = Vec::with_capacity((t * t * 3) as usize);
    for y in 0..t {
        for x in 0..t {
            let (lx, ly) = (tx * t + x, ty * t + y);
            let p = if lx < w && ly < h { (spec.pixel)(lx * ds, ly * ds) } else { [255, 255, 255] };
            rgb.extend_from_slice(&p);
        }
    }
    rgb
}

/// Write the series into `dir`; returns the files (levels from the largest, then the label).
pub fn write_dicom_slide(dir: &Path, spec: &DicomSlideSpec) -> Result<Vec<PathBuf>, SlideError> {
    let s = &spec.slide;
    if s.tile == 0 || !s.tile.is_multiple_of(16) {
        return Err(SlideError::Encode("tile size must be a positive multiple of 16".into()));
    }
    std::fs::create_dir_all(dir)?;
    let series_uid = uid_from(&format!("{}/series", spec.name));
    let mut out = Vec::new();
    let mut instance = 1u32;
    for level in 0..s.levels.max(1) {
        let ds = 1u32 << level;
        let (w, h) = (s.width.div_ceil(ds).max(1), s.height.div_ceil(ds).max(1));
        let (across, down) = (w.div_ceil(s.tile), h.div_ceil(s.tile));
        // (tile column, tile row, encoded frame) in the order written.
        let mut frames: Vec<(u32, u32, Vec<u8>)> = Vec::new();
        for ty in 0..down {
            for tx in 0..across {
                let rgb = tile_rgb(s, ds, w, h, tx, ty);
                if spec.sparse && rgb.iter().all(|v| *v == 255) {
                    continue;
                }
                let data = if s.uncompressed {
                    rgb
                } else {
                    let mut jpeg = Vec::new();
                    let mut e = jpeg_encoder::Encoder::new(&mut jpeg, s.jpeg_quality);
                    e.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_1);
                    let side = u16::try_from(s.tile).map_err(|_| SlideError::Encode("tile too large".into()))?;
                    e.encode(&rgb, side, side, jpeg_encoder::ColorType::Rgb).map_err(enc)?;
                    if jpeg.len() % 2 == 1 {
                        jpeg.push(0);
                    }
                    jpeg
                };
                frames.push((tx, ty, data));
            }
        }
        if spec.sparse {
            frames.reverse();
        }
        let parts: Vec<Vec<(u32, u32, Vec<u8>)>> = if level == 0 && spec.split_level0 && frames.len() > 1 {
            let second = frames.split_off(frames.len() / 2);
            vec![frames, second]
        } else {
            vec![frames]
        };
        let concatenation = (parts.len() > 1).then(|| uid_from(&format!("{}/concat/{level}", spec.name)));
        let mut frame_offset = 0u32;
        for (k, part) in parts.iter().enumerate() {
            let sop_uid = uid_from(&format!("{}/level/{level}/{k}", spec.name));
            let mut o = InMemDicomObject::new_empty();
            common(
                &mut o,
                spec,
                &series_uid,
                &sop_uid,
                instance,
                "VOLUME",
                if level == 0 { "NONE" } else { "RESAMPLED" },
            );
            put_u32(&mut o, tags::TOTAL_PIXEL_MATRIX_COLUMNS, w);
            put_u32(&mut o, tags::TOTAL_PIXEL_MATRIX_ROWS, h);
            put_str(
                &mut o,
                tags::DIMENSION_ORGANIZATION_TYPE,
                VR::CS,
                if spec.sparse { "TILED_SPARSE" } else { "TILED_FULL" },
            );
            let mm = s.microns_per_pixel * f64::from(ds) / 1000.0;
            put_seq(
                &mut o,
                tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
                vec![item(|g| {
                    put_seq(
                        g,
                        tags::PIXEL_MEASURES_SEQUENCE,
                        vec![item(|m| {
                            m.put(DataElement::new(
                                tags::PIXEL_SPACING,
                                VR::DS,
                                PrimitiveValue::Strs([format!("{mm:.9}"), format!("{mm:.9}")].into_iter().collect()),
                            ));
                        })],
                    )
                })],
            );
            if spec.sparse {
                let groups = part
                    .iter()
                    .map(|(tx, ty, _)| {
                        item(|g| {
                            put_seq(
                                g,
                                tags::PLANE_POSITION_SLIDE_SEQUENCE,
                                vec![item(|p| {
                                    put_i32(
                                        p,
                                        tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                                        (tx * s.tile + 1) as i32,
                                    );
                                    put_i32(
                                        p,
                                        tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                                        (ty * s.tile + 1) as i32,
                                    );
                                })],
                            )
                        })
                    })
                    .collect();
                put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, groups);
            }
            if let Some(c) = &concatenation {
                put_str(&mut o, tags::CONCATENATION_UID, VR::UI, c);
                put_u32(&mut o, tags::CONCATENATION_FRAME_OFFSET_NUMBER, frame_offset);
                put_u16(&mut o, tags::IN_CONCATENATION_NUMBER, (k + 1) as u16);
                put_u16(&mut o, tags::IN_CONCATENATION_TOTAL_NUMBER, parts.len() as u16);
                put_str(
                    &mut o,
                    tags::SOP_INSTANCE_UID_OF_CONCATENATION_SOURCE,
                    VR::UI,
                    &uid_from(&format!("{}/level/{level}/source", spec.name)),
                );
            }
            frame_offset += part.len() as u32;
            pixel_module(&mut o, s.tile, s.tile, part.len(), s.uncompressed);
            let ts_uid = if s.uncompressed {
                let bytes: Vec<u8> = part.iter().flat_map(|(_, _, d)| d.iter().copied()).collect();
                o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes)));
                ts::EXPLICIT_VR_LE
            } else {
                let fragments: Vec<Vec<u8>> = part.iter().map(|(_, _, d)| d.clone()).collect();
                o.put(DataElement::new(
                    tags::PIXEL_DATA,
                    VR::OB,
                    Value::PixelSequence(PixelFragmentSequence::new_fragments(fragments)),
                ));
                "1.2.840.10008.1.2.4.50"
            };
            let path = dir.join(format!("level-{level}-{k}.dcm"));
            write(&path, o, &sop_uid, ts_uid)?;
            out.push(path);
            instance += 1;
        }
    }
    if let Some(text) = &s.label_text {
        // A label instance (uncompressed, its text as a grey bar code stand-in): never decoded.
        let sop_uid = uid_from(&format!("{}/label", spec.name));
        let mut o = InMemDicomObject::new_empty();
        common(&mut o, spec, &series_uid, &sop_uid, instance, "LABEL", "NONE");
        put_u32(&mut o, tags::TOTAL_PIXEL_MATRIX_COLUMNS, 64);
        put_u32(&mut o, tags::TOTAL_PIXEL_MATRIX_ROWS, 32);
        put_str(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "TILED_FULL");
        put_str(&mut o, tags::SPECIMEN_LABEL_IN_IMAGE, VR::CS, "YES");
        put_str(&mut o, tags::TEXT_STRING, VR::LO, text);
        pixel_module(&mut o, 64, 32, 1, true);
        o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(vec![200u8; 64 * 32 * 3])));
        let path = dir.join("label.dcm");
        write(&path, o, &sop_uid, ts::EXPLICIT_VR_LE)?;
        out.push(path);
    }
    Ok(out)
}

/// Patient, study, series and whole-slide attributes every instance of the series shares.
fn common(
    o: &mut InMemDicomObject,
    spec: &DicomSlideSpec,
    series_uid: &str,
    sop_uid: &str,
    instance: u32,
    flavor: &str,
    derivation: &str,
) {
    let s = put_str;
    s(o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    s(o, tags::IMAGE_TYPE, VR::CS, &format!("DERIVED\\PRIMARY\\{flavor}\\{derivation}"));
    s(o, tags::SOP_CLASS_UID, VR::UI, sop_class::VL_WHOLE_SLIDE_MICROSCOPY);
    s(o, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    s(o, tags::STUDY_DATE, VR::DA, "20260101");
    s(o, tags::CONTENT_DATE, VR::DA, "20260101");
    s(o, tags::CONTENT_TIME, VR::TM, "101000");
    s(o, tags::MODALITY, VR::CS, "SM");
    s(o, tags::MANUFACTURER, VR::LO, "CRLM-EDGE SYNTHETIC");
    s(o, tags::PATIENT_NAME, VR::PN, "PATIENT^LABEL");
    s(o, tags::PATIENT_ID, VR::LO, &format!("{}-PID", spec.name));
    s(o, tags::STUDY_INSTANCE_UID, VR::UI, &uid_from(&format!("{}/study", spec.name)));
    s(o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    s(o, tags::SERIES_NUMBER, VR::IS, "1");
    s(o, tags::INSTANCE_NUMBER, VR::IS, &instance.to_string());
    s(o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &uid_from(&format!("{}/for", spec.name)));
    s(o, tags::CONTAINER_IDENTIFIER, VR::LO, &format!("{}-SLIDE", spec.name));
    s(o, tags::VOLUMETRIC_PROPERTIES, VR::CS, "VOLUME");
    put_u32(o, tags::NUMBER_OF_OPTICAL_PATHS, 1);
    put_u32(o, tags::TOTAL_PIXEL_MATRIX_FOCAL_PLANES, 1);
    put_seq(
        o,
        tags::OPTICAL_PATH_SEQUENCE,
        vec![item(|p| {
            s(p, tags::OPTICAL_PATH_IDENTIFIER, VR::SH, "1");
            put_seq(
                p,
                tags::ILLUMINATION_TYPE_CODE_SEQUENCE,
                vec![item(|c| {
                    s(c, tags::CODE_VALUE, VR::SH, "111744");
                    s(c, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
                    s(c, tags::CODE_MEANING, VR::LO, "Brightfield illumination");
                })],
            );
        })],
    );
}

fn pixel_module(o: &mut InMemDicomObject, columns: u32, rows: u32, frames: usize, uncompressed: bool) {
    put_str(o, tags::NUMBER_OF_FRAMES, VR::IS, &frames.to_string());
    put_u16(o, tags::SAMPLES_PER_PIXEL, 3);
    put_str(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, if uncompressed { "RGB" } else { "YBR_FULL_422" });
    put_u16(o, tags::PLANAR_CONFIGURATION, 0);
    put_u16(o, tags::ROWS, rows as u16);
    put_u16(o, tags::COLUMNS, columns as u16);
    put_u16(o, tags::BITS_ALLOCATED, 8);
    put_u16(o, tags::BITS_STORED, 8);
    put_u16(o, tags::HIGH_BIT, 7);
    put_u16(o, tags::PIXEL_REPRESENTATION, 0);
}

fn write(path: &Path, obj: InMemDicomObject, sop_uid: &str, ts_uid: &str) -> Result<(), SlideError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class::VL_WHOLE_SLIDE_MICROSCOPY)
        .media_storage_sop_instance_uid(sop_uid)
        .transfer_syntax(ts_uid)
        .implementation_class_uid(uid_from("crlm-edge implementation"))
        .implementation_version_name("CRLM_EDGE_01")
        .build()
        .map_err(enc)?;
    obj.with_exact_meta(meta).write_to_file(path).map_err(enc)
}
