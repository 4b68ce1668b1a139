//! 3DHISTECH MRXS (MIRAX) slides: `<name>.mrxs` beside a folder `<name>/` that holds
//! `Slidedat.ini` (an INI file: the slide's layout, its index file and its data files), the index
//! file (`Index.dat`: where each camera image lies in which data file) and the data files
//! (`Data0000.dat`, ...: the images, JPEG). Only OpenSlide reads the pixels
//! ([`super::openslide`], by the `.mrxs` path); this module reads `Slidedat.ini`, so that the
//! share can join the slide's files into one slide, and writes such slides as test fixtures
//! (feature `write`).
//!
//! - `Slidedat.ini` is recognised by content ([`sniff_slidedat`]) and is the slide's index in
//!   the share: the files it names and the `.mrxs` beside its folder are its parts.
//! - Every file name it gives must be a plain file name in its own folder: a name with a
//!   separator or `..` is refused, so it can never make a reader open a file elsewhere.
//! - It is read only if it is at most [`MAX_INDEX_BYTES`] (OpenSlide's own limit) and names at
//!   most [`MAX_DATA_FILES`] data files; both are checked before reading or allocating.

use super::SlideError;
use super::index::{group, head_text, lines, plain_name, read_bounded};
use std::fs::File;
use std::path::{Path, PathBuf};

/// OpenSlide reads at most 1 MiB of `Slidedat.ini`; so does this module.
pub const MAX_INDEX_BYTES: u64 = 1 << 20;
/// At most this many data files a slide.
pub const MAX_DATA_FILES: usize = 4096;
/// The index's own file name, as OpenSlide looks for it.
pub const SLIDEDAT: &str = "Slidedat.ini";

/// The name of the format, for people.
pub const FORMAT_NAME: &str = "3DHISTECH MRXS (a .mrxs file beside a folder of Slidedat.ini, an index and data files)";

/// What `Slidedat.ini` names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MrxsIndex {
    /// The index file (`[HIERARCHICAL] INDEXFILE`), beside `Slidedat.ini`.
    pub index_file: String,
    /// The data files (`[DATAFILE] FILE_n`), beside `Slidedat.ini`.
    pub data_files: Vec<String>,
}

impl MrxsIndex {
    /// The files beside `Slidedat.ini` the slide cannot be read without.
    pub fn members(&self) -> Vec<String> {
        std::iter::once(self.index_file.clone()).chain(self.data_files.iter().cloned()).collect()
    }
}

/// The `.mrxs` file OpenSlide opens for the `Slidedat.ini` at `slidedat`: `<folder>.mrxs` beside
/// the folder that holds it.
pub fn mrxs_path(slidedat: &Path) -> Option<PathBuf> {
    let folder = slidedat.parent()?;
    let name = folder.file_name()?.to_str()?;
    Some(folder.with_file_name(format!("{name}.mrxs")))
}

/// Is `head` (the file's first bytes) an MRXS `Slidedat.ini`? Its first group is `[GENERAL]`
/// and one of the slide's own keys follows in the head.
pub fn sniff_slidedat(head: &[u8]) -> bool {
    let mut l = lines(head_text(head));
    l.next().and_then(group) == Some("GENERAL")
        && l.take_while(|line| group(line).is_none())
            .filter_map(|line| line.split_once('=').map(|(k, _)| k.trim()))
            .any(|k| ["SLIDE_ID", "SLIDE_VERSION", "IMAGENUMBER_X"].contains(&k))
}

/// Parse `Slidedat.ini`: which files the slide is made of.
pub fn parse_slidedat(bytes: &[u8]) -> Result<MrxsIndex, SlideError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SlideError::Index("Slidedat.ini is not UTF-8 text".into()))?;
    let (mut current, mut index_file, mut count) = ("", None, None::<usize>);
    let mut files: Vec<(usize, String)> = Vec::new();
    for line in lines(text) {
        if let Some(g) = group(line) {
            current = g;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match (current, key) {
            ("HIERARCHICAL", "INDEXFILE") => index_file = Some(value.to_string()),
            ("DATAFILE", "FILE_COUNT") => {
                let n: usize =
                    value.parse().map_err(|_| SlideError::Index("Slidedat.ini: FILE_COUNT is not a number".into()))?;
                if n > MAX_DATA_FILES {
                    return Err(SlideError::OverLimit {
                        what: "MRXS data files",
                        value: n as u64,
                        limit: MAX_DATA_FILES as u64,
                    });
                }
                count = Some(n);
            }
            ("DATAFILE", k) if k.starts_with("FILE_") => {
                if let Ok(i) = k["FILE_".len()..].parse::<usize>() {
                    if files.len() >= MAX_DATA_FILES {
                        return Err(SlideError::OverLimit {
                            what: "MRXS data files",
                            value: files.len() as u64 + 1,
                            limit: MAX_DATA_FILES as u64,
                        });
                    }
                    files.push((i, value.to_string()));
                }
            }
            _ => {}
        }
    }
    let index_file = index_file
        .ok_or_else(|| SlideError::Index("Slidedat.ini names no index file ([HIERARCHICAL] INDEXFILE)".into()))?;
    plain_name(&index_file, "Slidedat.ini")?;
    let count = count.ok_or_else(|| SlideError::Index("Slidedat.ini has no [DATAFILE] FILE_COUNT".into()))?;
    let mut data_files = Vec::with_capacity(count);
    for i in 0..count {
        let name = files
            .iter()
            .rev()
            .find(|(n, _)| *n == i)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| SlideError::Index(format!("Slidedat.ini names no data file FILE_{i}")))?;
        plain_name(&name, "Slidedat.ini")?;
        data_files.push(name);
    }
    Ok(MrxsIndex { index_file, data_files })
}

/// Read and parse the `Slidedat.ini` in `file`, its size checked before reading.
pub fn read_slidedat(file: &File) -> Result<MrxsIndex, SlideError> {
    parse_slidedat(&read_bounded(file, MAX_INDEX_BYTES, "Slidedat.ini bytes")?)
}

/// Write an MRXS slide as OpenSlide reads it: `<stem>.mrxs` and the folder `<stem>/` with
/// `Slidedat.ini`, `Index.dat` and `Data0000.dat`. Camera images of `spec.tile` px (no overlap,
/// one division a side, no position map), JPEG; `spec.levels` zoom levels, each image of level
/// z covering 2^z x 2^z images of level 0 at every 2^z-th pixel. The slide is the images' grid:
/// `spec.width` and `spec.height` rounded up to whole images. Returns the files written, the
/// `.mrxs` first.
#[cfg(any(test, feature = "write"))]
pub fn write_mrxs(dir: &Path, stem: &str, spec: &super::SlideSpec) -> Result<Vec<PathBuf>, SlideError> {
    use std::fmt::Write as _;
    let t = spec.tile;
    if !(16..=4096).contains(&t) || spec.levels == 0 || spec.levels > 10 {
        return Err(SlideError::Encode("an MRXS slide needs a tile of 16 to 4096 px and 1 to 10 levels".into()));
    }
    let (nx, ny) = (spec.width.div_ceil(t), spec.height.div_ceil(t));
    let folder = dir.join(stem);
    std::fs::create_dir_all(&folder)?;
    let slide_id = format!("crlm-synth-{stem}");
    let le = |v: u32| v.to_le_bytes();
    // The data file: every level's images, JPEG one after another.
    let mut data = Vec::new();
    let mut entries: Vec<Vec<[u32; 4]>> = Vec::new();
    for z in 0..spec.levels {
        let step = 1u32 << z;
        let mut level = Vec::new();
        for y in (0..ny).step_by(step as usize) {
            for x in (0..nx).step_by(step as usize) {
                let mut rgb = Vec::with_capacity((t * t * 3) as usize);
                for v in 0..t {
                    for u in 0..t {
                        rgb.extend_from_slice(&(spec.pixel)(x * t + u * step, y * t + v * step));
                    }
                }
                let mut jpeg = Vec::new();
                let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, spec.jpeg_quality);
                enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
                enc.encode(&rgb, t as u16, t as u16, jpeg_encoder::ColorType::Rgb)
                    .map_err(|e| SlideError::Encode(e.to_string()))?;
                let offset =
                    u32::try_from(data.len()).map_err(|_| SlideError::Encode("data file over 4 GiB".into()))?;
                level.push([y * nx + x, offset, jpeg.len() as u32, 0]);
                data.extend_from_slice(&jpeg);
            }
        }
        entries.push(level);
    }
    // The index: version and slide id, the hierarchical root pointer, the non-hierarchical
    // root pointer (none here), one pointer per level to [0, page], each page [count, next = 0,
    // entries of (image index, offset, length, file number)].
    let mut index = format!("01.02{slide_id}").into_bytes();
    let table = index.len() as u32 + 8;
    index.extend_from_slice(&le(table));
    index.extend_from_slice(&le(0));
    let mut at = table + 4 * spec.levels;
    let mut level_ptrs = Vec::new();
    let mut pages = Vec::new();
    for level in &entries {
        level_ptrs.push(at);
        let page = at + 8;
        pages.extend_from_slice(&le(0));
        pages.extend_from_slice(&le(page));
        pages.extend_from_slice(&le(level.len() as u32));
        pages.extend_from_slice(&le(0));
        for e in level {
            for v in e {
                pages.extend_from_slice(&le(*v));
            }
        }
        at += 16 + 16 * level.len() as u32;
    }
    for p in level_ptrs {
        index.extend_from_slice(&le(p));
    }
    index.extend_from_slice(&pages);
    let mut ini = String::new();
    let _ = write!(
        ini,
        "[GENERAL]\nSLIDE_VERSION=1.9\nSLIDE_ID={slide_id}\nIMAGENUMBER_X={nx}\nIMAGENUMBER_Y={ny}\n\
         OBJECTIVE_MAGNIFICATION=20\nCameraImageDivisionsPerSide=1\n\n\
         [HIERARCHICAL]\nHIER_COUNT=1\nNONHIER_COUNT=0\nINDEXFILE=Index.dat\nHIER_0_NAME=Slide zoom level\n\
         HIER_0_COUNT={}\n",
        spec.levels
    );
    for z in 0..spec.levels {
        let _ = write!(ini, "HIER_0_VAL_{z}=ZoomLevel_{z}\nHIER_0_VAL_{z}_SECTION=LAYER_0_LEVEL_{z}_SECTION\n");
    }
    let _ = write!(ini, "\n[DATAFILE]\nFILE_COUNT=1\nFILE_0=Data0000.dat\n");
    for z in 0..spec.levels {
        let mpp = spec.microns_per_pixel * f64::from(1u32 << z);
        let _ = write!(
            ini,
            "\n[LAYER_0_LEVEL_{z}_SECTION]\nIMAGE_FORMAT=JPEG\nIMAGE_CONCAT_FACTOR={}\nOVERLAP_X=0\nOVERLAP_Y=0\n\
             MICROMETER_PER_PIXEL_X={mpp}\nMICROMETER_PER_PIXEL_Y={mpp}\nIMAGE_FILL_COLOR_BGR=16777215\n\
             DIGITIZER_WIDTH={t}\nDIGITIZER_HEIGHT={t}\n",
            u32::from(z > 0)
        );
    }
    let mrxs = dir.join(format!("{stem}.mrxs"));
    let files = [
        (folder.join("Data0000.dat"), data),
        (folder.join("Index.dat"), index),
        (folder.join(SLIDEDAT), ini.into_bytes()),
        // The .mrxs itself: OpenSlide only needs it to exist beside the folder.
        (mrxs.clone(), format!("MRXS slide {slide_id}\n").into_bytes()),
    ];
    let mut written = Vec::new();
    for (p, bytes) in files {
        std::fs::write(&p, bytes)?;
        written.push(p);
    }
    written.rotate_right(1);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slidedat_is_recognised_by_its_keys_and_names_its_files() {
        let text = "[GENERAL]\nSLIDE_VERSION=1.9\nSLIDE_ID=x\n[HIERARCHICAL]\nINDEXFILE=Index.dat\n\
                    [DATAFILE]\nFILE_COUNT=2\nFILE_1=Data0001.dat\nFILE_0=Data0000.dat\n";
        assert!(sniff_slidedat(text.as_bytes()));
        assert!(!sniff_slidedat(b"[GENERAL]\nname=other\n[HIERARCHICAL]\nSLIDE_ID=1\n"));
        assert!(!sniff_slidedat(b"[Virtual Microscope Specimen]\nImageFile=a.jpg\n"));
        let index = parse_slidedat(text.as_bytes()).unwrap();
        assert_eq!(index.members(), ["Index.dat", "Data0000.dat", "Data0001.dat"]);
        assert_eq!(
            mrxs_path(Path::new("/share/case/slide/Slidedat.ini")),
            Some(PathBuf::from("/share/case/slide.mrxs"))
        );
    }

    #[test]
    fn slidedat_naming_a_file_outside_its_folder_or_too_many_is_refused() {
        for bad in ["../../etc/passwd", "sub/Data.dat", "..", ".hidden"] {
            let text = format!(
                "[GENERAL]\nSLIDE_ID=x\n[HIERARCHICAL]\nINDEXFILE=Index.dat\n[DATAFILE]\nFILE_COUNT=1\nFILE_0={bad}\n"
            );
            let e = parse_slidedat(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("plain file name"), "{bad}: {e}");
        }
        let missing =
            "[GENERAL]\nSLIDE_ID=x\n[HIERARCHICAL]\nINDEXFILE=Index.dat\n[DATAFILE]\nFILE_COUNT=2\nFILE_0=a.dat\n";
        assert!(parse_slidedat(missing.as_bytes()).unwrap_err().to_string().contains("FILE_1"));
        let many = "[GENERAL]\nSLIDE_ID=x\n[HIERARCHICAL]\nINDEXFILE=Index.dat\n[DATAFILE]\nFILE_COUNT=99999999\n";
        assert!(matches!(parse_slidedat(many.as_bytes()), Err(SlideError::OverLimit { .. })));
    }

    #[test]
    fn a_written_slide_has_its_layout_and_an_index_naming_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = super::super::SlideSpec { levels: 3, ..super::super::SlideSpec::small(1024, 768) };
        let files = write_mrxs(dir.path(), "slide", &spec).unwrap();
        assert_eq!(files[0], dir.path().join("slide.mrxs"));
        let index = read_slidedat(&File::open(dir.path().join("slide").join(SLIDEDAT)).unwrap()).unwrap();
        assert_eq!(index.members(), ["Index.dat", "Data0000.dat"]);
        let idx = std::fs::read(dir.path().join("slide/Index.dat")).unwrap();
        assert!(idx.starts_with(b"01.02crlm-synth-slide"));
    }
}
