//! Whole-slide images: TIFF/BigTIFF/Aperio SVS headers, DICOM whole-slide series
//! ([`dicom_wsi`]), the indexes of multi-file slides ([`index`]: Hamamatsu VMS, 3DHISTECH MRXS;
//! their pixels through [`openslide`]), tile and region reading, and the writers of test slides.
//!
//! [`tiff::read_slide_header`] walks the IFD chain by hand with every count bounded, and checks
//! that every tile's offset and byte count lie inside the file and are non-zero: a slide still
//! being copied (or allocated at full length by Windows `CopyFile`) is not accepted.
//! Associated images (label, macro) are recognised so that they are never decoded into results:
//! they carry patient identifiers.

#[cfg(any(test, feature = "write"))]
pub mod dicom_writer;
pub mod dicom_wsi;
pub mod index;
pub mod mrxs;
#[cfg(feature = "openslide")]
pub mod openslide;
pub mod read;
pub mod sample;
pub mod tiff;
pub mod tissue;
pub mod vms;
#[cfg(any(test, feature = "write"))]
pub mod writer;

#[cfg(any(test, feature = "write"))]
pub use dicom_writer::{DicomSlideSpec, write_dicom_slide};
pub use tiff::{SlideFormat, SlideHeader, SlideLevel, read_slide_header, read_slide_header_file, sniff_tiff};
#[cfg(any(test, feature = "write"))]
pub use writer::{SlideSpec, write_pyramidal_tiff};

#[derive(Debug, thiserror::Error)]
pub enum SlideError {
    #[error("I/O error reading slide: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a TIFF file (no II*/MM* or BigTIFF signature)")]
    NotTiff,
    #[error("broken TIFF structure: {0}; the file is damaged or still being written, re-export it")]
    Broken(String),
    #[error("slide claims {what} = {value}, above the limit {limit}; refusing before allocating memory")]
    OverLimit { what: &'static str, value: u64, limit: u64 },
    #[error("slide data is incomplete: {0}")]
    Incomplete(String),
    #[error("slide has no tiled pyramid level (strip-only TIFFs are not whole-slide images)")]
    NoPyramid,
    #[error("slide compression {0} is not supported (JPEG, JPEG 2000, LZW, Deflate or none are)")]
    UnsupportedCompression(u16),
    #[error("slide format not supported: {0}")]
    Unsupported(String),
    #[error("DICOM whole-slide image: {0}")]
    Dicom(String),
    #[error("could not encode slide: {0}")]
    Encode(String),
    /// A multi-file slide's index (a VMS key file, an MRXS Slidedat.ini) that does not read, or names
    /// files it may not.
    #[error("slide index: {0}")]
    Index(String),
}

/// Another scanner's slide that OpenSlide (feature `openslide`, library installed) reads and the
/// native readers do not handle (a vendor other than Aperio, generic TIFF and DICOM): its header,
/// through OpenSlide, for the open `file` (opened as `/proc/self/fd/N`, so no path is followed
/// again). None where OpenSlide is not built in, not installed, or sees no such vendor: the native
/// readers decide. A multi-file slide (VMS, MRXS) needs its real path: see [`index_header`].
pub fn vendor_header(file: &std::fs::File, limits: &crate::limits::Limits) -> Option<Result<SlideHeader, SlideError>> {
    #[cfg(feature = "openslide")]
    {
        use std::os::fd::AsRawFd;
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let vendor = openslide::detect_vendor(&path)?;
        if ["aperio", "generic-tiff", "dicom"].contains(&vendor.as_str()) {
            return None;
        }
        Some(openslide::OpenSlide::open(&path, limits).map(|(_, h)| h))
    }
    #[cfg(not(feature = "openslide"))]
    {
        let _ = (file, limits);
        None
    }
}

/// The header of a multi-file slide (a Hamamatsu VMS index or an MRXS `Slidedat.ini`,
/// [`index`]) whose index is at `path`, read through OpenSlide by the path it opens (the index
/// itself, or the `.mrxs` beside an MRXS folder), with the files it cannot be read without in
/// [`SlideHeader::members`] (relative to the index's folder). The caller checks first that they
/// are there. Without OpenSlide (not built in or not installed) the slide is refused naming its
/// format.
pub fn index_header(
    path: &std::path::Path,
    index: &index::SlideIndex,
    limits: &crate::limits::Limits,
) -> Result<SlideHeader, SlideError> {
    let format = index.format_name();
    #[cfg(feature = "openslide")]
    {
        if let Err(why) = openslide::library_version() {
            return Err(SlideError::Unsupported(format!("{format}: only OpenSlide reads it; {why}")));
        }
        let open = index
            .open_path(path)
            .ok_or_else(|| SlideError::Index(format!("{format}: no path to open the slide by")))?;
        if openslide::detect_vendor(&open).is_none() {
            return Err(SlideError::Unsupported(format!(
                "{format}: the installed OpenSlide does not recognise this one"
            )));
        }
        let (_, mut header) = openslide::OpenSlide::open(&open, limits)?;
        header.members = index.required();
        Ok(header)
    }
    #[cfg(not(feature = "openslide"))]
    {
        let _ = (path, index, limits);
        Err(SlideError::Unsupported(format!(
            "{format}: only OpenSlide reads it, and this build of crlm has no OpenSlide support (feature `openslide`)"
        )))
    }
}
