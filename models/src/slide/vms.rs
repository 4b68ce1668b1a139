//! Hamamatsu VMS slides: a small key file (group `[Virtual Microscope Specimen]`) that names,
//! beside it in the same folder, the slide's JPEG files: the image file(s), a map (a low
//! resolution overview), optionally a macro image (the glass with its label) and an
//! optimisation file (restart-marker offsets). Only OpenSlide reads the pixels
//! ([`super::openslide`]); this module reads the index, so that the share can join a slide's
//! files into one slide, and writes such slides as test fixtures (feature `write`).
//!
//! - Recognised by content ([`sniff_vms`]), never by the `.vms` extension.
//! - Every name the index gives must be a plain file name in the index's own folder: a name with
//!   a separator or `..` is refused, so the index can never make a reader open a file elsewhere.
//! - The index is read only if it is at most [`MAX_INDEX_BYTES`] (OpenSlide's own key-file
//!   limit) and names at most [`MAX_MEMBERS`] files; both are checked before reading.

use super::SlideError;
use super::index::{group, head_text, lines, plain_name, read_bounded};
use std::fs::File;

/// OpenSlide reads at most 64 KiB of a key file; so does this module.
pub const MAX_INDEX_BYTES: u64 = 64 << 10;
/// At most this many files a slide (a grid of image files, the map, the macro, the optimisation file).
pub const MAX_MEMBERS: usize = 1024;

/// The group of a JPEG slide and of an uncompressed one (VMU).
const GROUPS: [&str; 2] = ["Virtual Microscope Specimen", "Uncompressed Virtual Microscope Specimen"];

/// The name of the format, for people.
pub const FORMAT_NAME: &str = "Hamamatsu VMS (an index file and the JPEG files it names)";

/// The files a VMS index names, all in the index's own folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmsIndex {
    /// Files the slide cannot be read without: the image file(s), the map, the macro image.
    pub required: Vec<String>,
    /// Files used when present (the optimisation file: OpenSlide reads without it, more slowly).
    pub optional: Vec<String>,
}

impl VmsIndex {
    /// Every file the index names, required first.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.required.iter().chain(&self.optional).map(String::as_str)
    }

    /// Does the index name `file` (a plain file name)?
    pub fn names(&self, file: &str) -> bool {
        self.members().any(|m| m == file)
    }
}

/// Is `head` (the file's first bytes) a VMS or VMU index? Its first group must be one of theirs.
pub fn sniff_vms(head: &[u8]) -> bool {
    lines(head_text(head)).next().and_then(group).is_some_and(|g| GROUPS.contains(&g))
}

/// Parse a VMS/VMU index: which files the slide is made of.
pub fn parse_index(bytes: &[u8]) -> Result<VmsIndex, SlideError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SlideError::Index("the VMS index is not UTF-8 text".into()))?;
    let mut index = VmsIndex::default();
    let (mut in_group, mut images, mut map) = (false, 0usize, false);
    for line in lines(text) {
        if let Some(g) = group(line) {
            in_group = GROUPS.contains(&g);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let (key, value) = (key.trim(), value.trim());
        if !in_group || value.is_empty() {
            continue;
        }
        let required = if key.starts_with("ImageFile") {
            images += 1;
            true
        } else if key == "MapFile" {
            map = true;
            true
        } else if key == "MacroImage" {
            true
        } else if key == "OptimisationFile" {
            false
        } else {
            continue;
        };
        plain_name(value, "the VMS index")?;
        if index.names(value) {
            continue;
        }
        if index.required.len() + index.optional.len() >= MAX_MEMBERS {
            return Err(SlideError::OverLimit {
                what: "files named by a VMS index",
                value: MAX_MEMBERS as u64 + 1,
                limit: MAX_MEMBERS as u64,
            });
        }
        if required { index.required.push(value.to_string()) } else { index.optional.push(value.to_string()) }
    }
    if images == 0 || !map {
        return Err(SlideError::Index("the VMS index names no image file (ImageFile) or no map (MapFile)".into()));
    }
    Ok(index)
}

/// Read and parse the index in `file`, its size checked before reading.
pub fn read_index(file: &File) -> Result<VmsIndex, SlideError> {
    parse_index(&read_bounded(file, MAX_INDEX_BYTES, "VMS index bytes")?)
}

/// Write a VMS slide as Hamamatsu's scanners lay it out: `<stem>.vms`, the image
/// `<stem>.jpg` (4:2:2, restart markers every tile's width of MCUs, as OpenSlide requires), the
/// map `<stem>_map.jpg` (an eighth of the size) and, if `spec.label_text` is set, a macro image
/// `<stem>_macro.jpg`. Returns the files written, the index first.
#[cfg(any(test, feature = "write"))]
pub fn write_vms(
    dir: &std::path::Path,
    stem: &str,
    spec: &super::SlideSpec,
) -> Result<Vec<std::path::PathBuf>, SlideError> {
    use std::fmt::Write as _;
    let (w, h) = (spec.width, spec.height);
    if w < 16 || h < 16 || w > u32::from(u16::MAX) || h > u32::from(u16::MAX) {
        return Err(SlideError::Encode(format!("a VMS image of {w} x {h} cannot be written (16 to 65535 a side)")));
    }
    let image = |w: u32, h: u32, scale: u32| {
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&(spec.pixel)(x * scale, y * scale));
            }
        }
        rgb
    };
    // Restart markers every `interval` MCUs (16 x 8 px at 4:2:2): OpenSlide's tiles, one MCU
    // high. The interval must divide the MCUs of a row; the largest divisor within a tile's width
    // is used. Not 4:2:0: OpenSlide decodes each tile as a JPEG of its own size, and libjpeg's
    // vertical chroma upsampling then reads on into the next interval and fails at its marker.
    let encode = |rgb: &[u8], w: u32, h: u32, tile: u32| -> Result<Vec<u8>, SlideError> {
        let mcus = w.div_ceil(16);
        let interval = (1..=(tile / 16).clamp(1, mcus)).rev().find(|d| mcus.is_multiple_of(*d)).unwrap_or(1);
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, spec.jpeg_quality);
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_1);
        enc.set_restart_interval(interval as u16);
        enc.encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .map_err(|e| SlideError::Encode(e.to_string()))?;
        Ok(out)
    };
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let image_name = format!("{stem}.jpg");
    let map_name = format!("{stem}_map.jpg");
    let macro_name = format!("{stem}_macro.jpg");
    let (mw, mh) = ((w / 8).max(16), (h / 8).max(16));
    let mut files = vec![
        (image_name.clone(), encode(&image(w, h, 1), w, h, spec.tile)?),
        (map_name.clone(), encode(&image(mw, mh, 8), mw, mh, 16)?),
    ];
    if let Some(text) = &spec.label_text {
        // The glass with its label: grey with the label's bytes as stripes (identifiers, as a
        // scanner's macro carries them, never read into results).
        let (lw, lh) = (256u32, 96u32);
        let seed: u32 = text.bytes().map(u32::from).sum();
        let rgb: Vec<u8> = (0..lw * lh).flat_map(|i| [((i + seed) % 251) as u8, 200, 200]).collect();
        files.push((macro_name.clone(), encode(&rgb, lw, lh, 16)?));
    }
    let mut key = String::from("[Virtual Microscope Specimen]\n");
    let nm = |px: u32| (f64::from(px) * spec.microns_per_pixel * 1000.0).round();
    let _ = write!(
        key,
        "NoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\nImageFile={image_name}\nMapFile={map_name}\n\
         PhysicalWidth={}\nPhysicalHeight={}\nSourceLens=20\n",
        nm(w),
        nm(h)
    );
    if spec.label_text.is_some() {
        let _ = writeln!(key, "MacroImage={macro_name}");
    }
    // The index last, as a scanner's export finishes: its files are there when it appears.
    for (name, bytes) in &files {
        let p = dir.join(name);
        std::fs::write(&p, bytes)?;
        written.push(p);
    }
    let index = dir.join(format!("{stem}.vms"));
    std::fs::write(&index, key)?;
    written.insert(0, index);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_recognised_by_its_group_and_names_its_files() {
        let text = "\u{feff}# exported\n[Virtual Microscope Specimen]\nNoJpegColumns=2\nNoJpegRows=1\n\
                    ImageFile=a.jpg\nImageFile(1,0) = b.jpg\nMapFile=a_map.jpg\nOptimisationFile=a.opt\n\
                    MacroImage=a_macro.jpg\n[Other]\nImageFile=elsewhere.jpg\n";
        assert!(sniff_vms(text.as_bytes()));
        assert!(sniff_vms(&text.as_bytes()[..50]), "a head cut mid-file still sniffs");
        let index = parse_index(text.as_bytes()).unwrap();
        assert_eq!(index.required, ["a.jpg", "b.jpg", "a_map.jpg", "a_macro.jpg"]);
        assert_eq!(index.optional, ["a.opt"]);
        assert!(index.names("b.jpg") && !index.names("elsewhere.jpg"));
        assert!(sniff_vms(b"\n[Uncompressed Virtual Microscope Specimen]\n"));
        assert!(!sniff_vms(b"[GENERAL]\nSLIDE_ID=1\n"));
        assert!(!sniff_vms(b"II*\0"));
    }

    #[test]
    fn an_index_naming_a_file_outside_its_folder_or_nothing_is_refused() {
        for bad in ["../../etc/passwd", "sub/a.jpg", "..", ".hidden.jpg", "c:\\a.jpg"] {
            let text = format!("[Virtual Microscope Specimen]\nImageFile={bad}\nMapFile=m.jpg\n");
            let e = parse_index(text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("plain file name"), "{bad}: {e}");
        }
        let e = parse_index(b"[Virtual Microscope Specimen]\nImageFile=a.jpg\n").unwrap_err();
        assert!(e.to_string().contains("MapFile"), "{e}");
        let mut many = String::from("[Virtual Microscope Specimen]\nMapFile=m.jpg\n");
        for i in 0..MAX_MEMBERS {
            many.push_str(&format!("ImageFile({i},0)=i{i}.jpg\n"));
        }
        assert!(matches!(parse_index(many.as_bytes()), Err(SlideError::OverLimit { .. })));
    }

    #[test]
    fn written_slides_carry_restart_markers_every_tile_and_an_index_naming_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = super::super::SlideSpec::small(1024, 512);
        let files = write_vms(dir.path(), "slide", &spec).unwrap();
        assert_eq!(files.len(), 4);
        let index = read_index(&File::open(&files[0]).unwrap()).unwrap();
        assert_eq!(index.required, ["slide.jpg", "slide_map.jpg", "slide_macro.jpg"]);
        let jpeg = std::fs::read(dir.path().join("slide.jpg")).unwrap();
        // DRI: 16 MCUs of 16 px = the 256 px tile.
        let dri = jpeg.windows(2).position(|w| w == [0xFF, 0xDD]).expect("a DRI marker");
        assert_eq!(jpeg.get(dri + 4..dri + 6), Some(&[0u8, 16][..]));
        let restarts = jpeg.windows(2).filter(|w| w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1])).count();
        // 4 tiles a row, 64 MCU rows (8 px high), less the last interval (no marker after it).
        assert_eq!(restarts, 4 * 64 - 1);
    }
}
