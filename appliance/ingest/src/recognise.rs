//! Recognition by content, never by extension: DICOM (Part 10 or raw), TIFF/BigTIFF/SVS, the
//! schema-v1 clinical file, and multi-file slides (a Hamamatsu VMS index and the JPEG files it
//! names beside it; an MRXS `Slidedat.ini`, the index and data files beside it and the `.mrxs`
//! beside its folder). Only headers are read. The outcome says whether the file is usable, not
//! complete yet (wait and look again), or bad (quarantine, with the failed check and what staff
//! should do).
//!
//! A multi-file slide is recognised by its index; the files it names are accepted as its parts
//! ([`Recognised::SlidePart`]) only while an index beside them names them. A bare JPEG, `.dat`
//! or `.mrxs` file that no index names yet waits (the index may still be on its way) and is
//! quarantined if none comes: the one place a name counts, and only to wait, never to accept
//! (an MRXS `.mrxs`, whose content no reader looks at, is its slide's by the format's layout).

use crlm_models::clinical::{self, ClinicalFormat, ClinicalRecord};
use crlm_models::dicom::{self, DicomError, DicomHeader, sop_class};
use crlm_models::limits::Limits;
use crlm_models::slide::index::{self, IndexKind, SlideIndex, member_path};
use crlm_models::slide::{self, SlideError, SlideHeader};
use serde::Serialize;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Content kinds, as `crlm inspect` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Dicom,
    Slide,
    /// A file of a multi-file slide other than its index (a VMS slide's JPEG files, an MRXS
    /// slide's index and data files and its `.mrxs`).
    #[serde(rename = "slide_part")]
    SlidePart,
    Clinical,
    Unknown,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Dicom => "dicom",
            FileKind::Slide => "slide",
            FileKind::SlidePart => "slide_part",
            FileKind::Clinical => "clinical",
            FileKind::Unknown => "unknown",
        }
    }
}

/// A DICOM file's details as the state database keeps them: its header's fields and its role,
/// in one object (what `crlm inspect` shows and the case evaluation reads back).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DicomDetails {
    #[serde(flatten)]
    pub header: DicomHeader,
    /// Absent only in a row no recognition wrote.
    #[serde(default)]
    pub role: Option<DicomRole>,
}

/// What a DICOM file is for in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DicomRole {
    /// A CT image: candidate for series selection.
    CtImage,
    /// A segmentation or RT structure set: a region-of-interest source.
    RegionOfInterest,
    /// Anything else (MR, SR, secondary capture): kept, not used.
    NotUsed,
}

#[derive(Debug, Clone)]
pub enum Recognised {
    Dicom {
        header: Box<DicomHeader>,
        role: DicomRole,
    },
    Slide(Box<SlideHeader>),
    /// A file of a multi-file slide, named by the index `index` (the index's path relative to
    /// the file's folder: `slide.vms`, or `slide/Slidedat.ini` for an MRXS slide's `.mrxs`).
    SlidePart {
        index: String,
    },
    Clinical {
        format: ClinicalFormat,
        records: Vec<ClinicalRecord>,
    },
}

impl Recognised {
    pub fn kind(&self) -> FileKind {
        match self {
            Recognised::Dicom { .. } => FileKind::Dicom,
            Recognised::Slide(_) => FileKind::Slide,
            Recognised::SlidePart { .. } => FileKind::SlidePart,
            Recognised::Clinical { .. } => FileKind::Clinical,
        }
    }

    /// Details kept in the state database and shown by `crlm inspect` (headers, never pixels).
    pub fn details(&self) -> serde_json::Value {
        match self {
            Recognised::Dicom { header, role } => {
                serde_json::to_value(DicomDetails { header: header.as_ref().clone(), role: Some(*role) })
                    .unwrap_or_default()
            }
            Recognised::Slide(h) => serde_json::to_value(h.as_ref()).unwrap_or_default(),
            Recognised::SlidePart { index } => serde_json::json!({ "index": index }),
            Recognised::Clinical { format, records } => serde_json::json!({
                "format": format,
                "records": records.len(),
                "record_hashes": records.iter().map(|r| r.hash()).collect::<Vec<_>>(),
            }),
        }
    }
}

/// A bad file: which check failed, why, and what staff should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: FileKind,
    pub check: &'static str,
    pub reason: String,
    pub action: &'static str,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Usable(Recognised),
    /// Not complete yet (still being written?): look again; quarantined if it stays so.
    NotYet(Problem),
    Bad(Problem),
}

const ACTION_REEXPORT: &str = "Re-export the file from the scanner or PACS into the case folder.";
const ACTION_UNSUPPORTED: &str = "Remove the file from the share; only CT DICOM, slides (SVS, pyramidal TIFF, DICOM) and the clinical file belong there.";
const ACTION_CLINICAL: &str =
    "Correct the clinical file (see docs/CLINICAL.md) and save it again into the case folder.";
const ACTION_SLIDE: &str = "Export the slide as Aperio SVS or tiled pyramidal TIFF into the case folder.";
const ACTION_DICOM_SLIDE: &str = "Export the slide again as DICOM (brightfield, one focal plane; JPEG, JPEG 2000 or \
     uncompressed frames) or as Aperio SVS / tiled pyramidal TIFF into the case folder.";
const ACTION_VMS: &str = "Copy the whole slide (a .vms and the files it names; or a .mrxs with its folder) into \
     the same case folder, or export the slide as Aperio SVS, tiled pyramidal TIFF or DICOM.";
const ACTION_NO_OPENSLIDE: &str = "Export the slide as Aperio SVS, tiled pyramidal TIFF or DICOM (read natively), or \
     install OpenSlide on the box (docs/IMAGING.md).";
const ACTION_SUPPORT: &str = "Call support with the quarantine record; the file exceeds the appliance's limits.";

fn problem(kind: FileKind, check: &'static str, reason: impl Into<String>, action: &'static str) -> Problem {
    Problem { kind, check, reason: reason.into(), action }
}

/// Recognise an open file by its content. The file lies at `rel` beneath `root` (the share, or
/// the folder `crlm predict`/`inspect` reads): a multi-file slide's index and parts are checked
/// against the files beside them, never outside `root`.
pub fn recognise(file: &File, root: &Path, rel: &Path, limits: &Limits) -> Outcome {
    let path = &root.join(rel);
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            return Outcome::NotYet(problem(
                FileKind::Unknown,
                "file.readable",
                format!("cannot stat: {e}"),
                ACTION_REEXPORT,
            ));
        }
    };
    if len == 0 {
        return Outcome::NotYet(problem(
            FileKind::Unknown,
            "file.non_empty",
            "the file is empty (0 bytes)",
            ACTION_REEXPORT,
        ));
    }
    let mut head = [0u8; 4096];
    let n = match dicom::read_prefix(file, &mut head) {
        Ok(n) => n,
        Err(e) => {
            return Outcome::NotYet(problem(
                FileKind::Unknown,
                "file.readable",
                format!("cannot read: {e}"),
                ACTION_REEXPORT,
            ));
        }
    };
    let head = &head[..n];
    if head.iter().all(|b| *b == 0) {
        return Outcome::NotYet(problem(
            FileKind::Unknown,
            "file.written",
            format!("the first {n} bytes are all zero: allocated but not yet written"),
            ACTION_REEXPORT,
        ));
    }
    // DICOM first: a Part 10 preamble may itself hold a TIFF header (dual-personality files).
    if dicom::sniff_dicom(head).is_some() {
        return recognise_dicom(file, limits);
    }
    if slide::sniff_tiff(head).is_some() {
        return recognise_slide(file, limits);
    }
    if clinical::sniff_clinical(head).is_some() {
        return recognise_clinical(file, len, limits);
    }
    if let Some(kind) = index::sniff(head) {
        return recognise_index(file, path, rel, kind, limits);
    }
    if let Some(index) = naming_index(path) {
        return Outcome::Usable(Recognised::SlidePart { index });
    }
    let mrxs_like = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mrxs") || e.eq_ignore_ascii_case("dat"));
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) || mrxs_like {
        return Outcome::NotYet(problem(
            FileKind::Unknown,
            "slide.index",
            "a file of a multi-file slide (a bare JPEG image, or an MRXS .mrxs or .dat file) that no slide index \
             beside it names (a .vms, or Slidedat.ini in the slide's folder)",
            ACTION_VMS,
        ));
    }
    Outcome::Bad(problem(
        FileKind::Unknown,
        "file.recognised",
        "unsupported file: its content is not DICOM, TIFF/SVS or a schema-v1 clinical file",
        ACTION_UNSUPPORTED,
    ))
}

fn recognise_dicom(file: &File, limits: &Limits) -> Outcome {
    let k = FileKind::Dicom;
    let header = match dicom::read_header_file(file, limits) {
        Ok(h) => h,
        Err(e @ DicomError::OverLimit { .. }) => {
            return Outcome::Bad(problem(k, "dicom.limits", e.to_string(), ACTION_SUPPORT));
        }
        Err(e @ DicomError::NotDicom) => {
            return Outcome::Bad(problem(k, "dicom.header", e.to_string(), ACTION_REEXPORT));
        }
        // A header that does not parse may still be arriving.
        Err(e @ DicomError::Incomplete(_)) => {
            return Outcome::NotYet(problem(k, "dicom.complete", e.to_string(), ACTION_REEXPORT));
        }
        Err(e) => return Outcome::NotYet(problem(k, "dicom.header", e.to_string(), ACTION_REEXPORT)),
    };
    let sop = header.sop_class_uid.as_deref().unwrap_or("");
    if sop == sop_class::VL_WHOLE_SLIDE_MICROSCOPY {
        return recognise_dicom_slide(file, limits);
    }
    if header.rows.is_some()
        && let Err(e) = dicom::check_pixel_data_file(file, &header, limits)
    {
        return match e {
            DicomError::OverLimit { .. } => Outcome::Bad(problem(k, "dicom.limits", e.to_string(), ACTION_SUPPORT)),
            _ => Outcome::NotYet(problem(k, "dicom.complete", e.to_string(), ACTION_REEXPORT)),
        };
    }
    let modality = header.modality.as_deref().unwrap_or("");
    let role = if sop == sop_class::SEGMENTATION
        || sop == sop_class::RT_STRUCTURE_SET
        || modality == "SEG"
        || modality == "RTSTRUCT"
    {
        DicomRole::RegionOfInterest
    } else if modality == "CT" || sop == sop_class::CT_IMAGE || sop == sop_class::ENHANCED_CT_IMAGE {
        DicomRole::CtImage
    } else {
        DicomRole::NotUsed
    };
    Outcome::Usable(Recognised::Dicom { header: Box::new(header), role })
}

fn recognise_slide(file: &File, limits: &Limits) -> Outcome {
    let k = FileKind::Slide;
    // Another scanner's TIFF-based format (NDPI, SCN, BIF, Philips TIFF) goes to OpenSlide where
    // it is installed; the header then says so (format `open_slide`, the vendor as scanner).
    match slide::vendor_header(file, limits) {
        Some(Ok(h)) => return Outcome::Usable(Recognised::Slide(Box::new(h))),
        Some(Err(e @ SlideError::OverLimit { .. })) => {
            return Outcome::Bad(problem(k, "slide.limits", e.to_string(), ACTION_SUPPORT));
        }
        // OpenSlide's errors do not tell a damaged file from one still arriving: look again,
        // and quarantine it if it stays so.
        Some(Err(e)) => return Outcome::NotYet(problem(k, "slide.openslide", e.to_string(), ACTION_SLIDE)),
        None => {}
    }
    let f = match file.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::NotYet(problem(k, "file.readable", e.to_string(), ACTION_REEXPORT)),
    };
    match slide::tiff::read_slide_header_file(f, limits) {
        Ok(h) => Outcome::Usable(Recognised::Slide(Box::new(h))),
        Err(e @ SlideError::OverLimit { .. }) => {
            Outcome::Bad(problem(k, "slide.limits", e.to_string(), ACTION_SUPPORT))
        }
        Err(e @ SlideError::NoPyramid) => Outcome::Bad(problem(k, "slide.pyramid", e.to_string(), ACTION_SLIDE)),
        Err(e @ SlideError::UnsupportedCompression(_)) => {
            Outcome::Bad(problem(k, "slide.compression", e.to_string(), ACTION_SLIDE))
        }
        Err(e @ (SlideError::Incomplete(_) | SlideError::Io(_))) => {
            Outcome::NotYet(problem(k, "slide.tiles_complete", e.to_string(), ACTION_REEXPORT))
        }
        Err(e) => Outcome::NotYet(problem(k, "slide.structure", e.to_string(), ACTION_REEXPORT)),
    }
}

/// One file of a DICOM slide (a level, or its label, overview or thumbnail): its header and
/// frame table must read; the case joins its files into one slide by series.
fn recognise_dicom_slide(file: &File, limits: &Limits) -> Outcome {
    let k = FileKind::Slide;
    match slide::dicom_wsi::read_instance(std::path::Path::new(""), file, limits) {
        Ok(i) => Outcome::Usable(Recognised::Slide(Box::new(i.header()))),
        Err(e @ SlideError::OverLimit { .. }) => {
            Outcome::Bad(problem(k, "slide.limits", e.to_string(), ACTION_SUPPORT))
        }
        Err(e @ SlideError::Dicom(_)) => Outcome::Bad(problem(k, "slide.dicom", e.to_string(), ACTION_DICOM_SLIDE)),
        Err(e @ (SlideError::Incomplete(_) | SlideError::Io(_))) => {
            Outcome::NotYet(problem(k, "slide.tiles_complete", e.to_string(), ACTION_REEXPORT))
        }
        Err(e) => Outcome::NotYet(problem(k, "slide.structure", e.to_string(), ACTION_REEXPORT)),
    }
}

fn recognise_clinical(file: &File, len: u64, limits: &Limits) -> Outcome {
    let k = FileKind::Clinical;
    if len > limits.max_clinical_bytes {
        return Outcome::Bad(problem(
            k,
            "clinical.limits",
            format!("clinical file has {len} bytes, above the limit {}", limits.max_clinical_bytes),
            ACTION_CLINICAL,
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    let mut r = file;
    use std::io::Seek;
    if let Err(e) = r.seek(std::io::SeekFrom::Start(0)).and_then(|_| r.take(len).read_to_end(&mut bytes)) {
        return Outcome::NotYet(problem(k, "file.readable", e.to_string(), ACTION_CLINICAL));
    }
    match clinical::parse_clinical(&bytes) {
        Ok((format, records)) => Outcome::Usable(Recognised::Clinical { format, records }),
        Err(e) => {
            let truncated_json = e.problems.iter().any(|p| p.message.contains("EOF while parsing"));
            let p = problem(k, "clinical.schema_v1", e.to_string(), ACTION_CLINICAL);
            if truncated_json { Outcome::NotYet(p) } else { Outcome::Bad(p) }
        }
    }
}

/// A multi-file slide's index (a VMS key file, an MRXS Slidedat.ini): its parts must all be
/// there as plain files before OpenSlide reads the slide by its path; without OpenSlide the slide
/// is refused naming the format.
fn recognise_index(file: &File, path: &Path, rel: &Path, kind: IndexKind, limits: &Limits) -> Outcome {
    let k = FileKind::Slide;
    // An MRXS Slidedat.ini names the .mrxs beside its own folder: that folder must itself be
    // inside the share (a case folder), or the .mrxs would lie outside it.
    if kind == IndexKind::Mrxs && rel.components().count() < 2 {
        return Outcome::Bad(problem(
            k,
            "slide.index",
            "an MRXS Slidedat.ini must lie in the slide's folder, beside the .mrxs, inside a case folder",
            ACTION_VMS,
        ));
    }
    let index = match SlideIndex::read(kind, file, path) {
        Ok(i) => i,
        Err(e @ SlideError::OverLimit { .. }) => {
            return Outcome::Bad(problem(k, "slide.limits", e.to_string(), ACTION_SUPPORT));
        }
        Err(e @ SlideError::Io(_)) => {
            return Outcome::NotYet(problem(k, "file.readable", e.to_string(), ACTION_REEXPORT));
        }
        Err(e) => return Outcome::Bad(problem(k, "slide.index", e.to_string(), ACTION_VMS)),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let required = index.required();
    let mut missing = 0;
    for name in &required {
        match std::fs::symlink_metadata(member_path(dir, name)) {
            Err(_) => missing += 1,
            Ok(m) if !m.file_type().is_file() => {
                return Outcome::Bad(problem(
                    k,
                    "slide.parts",
                    "a file the slide's index names is a link, folder or special file, not a plain file",
                    ACTION_VMS,
                ));
            }
            Ok(_) => {}
        }
    }
    if missing > 0 {
        return Outcome::NotYet(problem(
            k,
            "slide.parts",
            format!("{missing} of the {} files the slide's index names are not there yet", required.len()),
            ACTION_VMS,
        ));
    }
    match slide::index_header(path, &index, limits) {
        Ok(h) => Outcome::Usable(Recognised::Slide(Box::new(h))),
        Err(e @ SlideError::OverLimit { .. }) => {
            Outcome::Bad(problem(k, "slide.limits", e.to_string(), ACTION_SUPPORT))
        }
        Err(e @ SlideError::Unsupported(_)) => {
            Outcome::Bad(problem(k, "slide.format", e.to_string(), ACTION_NO_OPENSLIDE))
        }
        // OpenSlide's errors do not tell a damaged part from one still arriving: look again.
        Err(e) => Outcome::NotYet(problem(k, "slide.openslide", e.to_string(), ACTION_VMS)),
    }
}

/// The index that names the file at `path`, if there is one, as its path relative to the file's
/// folder: a VMS or MRXS index beside it, or for a `.mrxs` file the `Slidedat.ini` in the
/// folder of the same name beside it. Only plain files up to the index size limit whose first
/// bytes read as an index are opened; at most `MAX_SIBLINGS` entries of the folder are looked at.
fn naming_index(path: &Path) -> Option<String> {
    const MAX_SIBLINGS: usize = 4096;
    let dir = path.parent()?;
    let names = |candidate: &Path| -> bool {
        let Ok(meta) = std::fs::symlink_metadata(candidate) else { return false };
        if !meta.file_type().is_file() || meta.len() == 0 || meta.len() > index::MAX_INDEX_BYTES {
            return false;
        }
        let Ok(f) = File::open(candidate) else { return false };
        let mut head = [0u8; 512];
        let n = dicom::read_prefix(&f, &mut head).unwrap_or(0);
        let Some(kind) = index::sniff(head.get(..n).unwrap_or_default()) else { return false };
        SlideIndex::read(kind, &f, candidate).is_ok_and(|i| i.names(candidate, path))
    };
    if let Some(stem) = path.file_name()?.to_str()?.strip_suffix(".mrxs") {
        let slidedat = dir.join(stem).join(crlm_models::slide::mrxs::SLIDEDAT);
        if names(&slidedat) {
            return Some(format!("{stem}/{}", crlm_models::slide::mrxs::SLIDEDAT));
        }
    }
    // A file of an MRXS folder: the folder's own Slidedat.ini first (one look, where a search
    // of the siblings would read up to 4,096 for each of as many data files).
    let slidedat = dir.join(crlm_models::slide::mrxs::SLIDEDAT);
    if slidedat != path && names(&slidedat) {
        return Some(crlm_models::slide::mrxs::SLIDEDAT.to_string());
    }
    for entry in std::fs::read_dir(dir).ok()?.take(MAX_SIBLINGS).flatten() {
        let candidate = entry.path();
        if candidate != path && names(&candidate) {
            return entry.file_name().to_str().map(str::to_string);
        }
    }
    None
}
