//! A bounded reader for TIFF and BigTIFF directory structures (headers only, no pixels).

use super::SlideError;
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// TIFF flavour from the first four bytes, if it is one: (little endian, big tiff).
pub fn sniff_tiff(head: &[u8]) -> Option<(bool, bool)> {
    match head.get(..4)? {
        b"II*\0" => Some((true, false)),
        b"MM\0*" => Some((false, false)),
        b"II+\0" => Some((true, true)),
        b"MM\0+" => Some((false, true)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlideFormat {
    AperioSvs,
    GenericTiff,
    /// DICOM VL Whole Slide Microscopy (a series of files: [`super::dicom_wsi`]).
    DicomWsi,
    /// Another scanner's format, read through OpenSlide (`scanner` names OpenSlide's vendor).
    OpenSlide,
}

impl SlideFormat {
    /// Which reader the slide goes to, for people: the native readers or OpenSlide.
    pub fn reader(self) -> &'static str {
        match self {
            SlideFormat::AperioSvs | SlideFormat::GenericTiff => "native TIFF reader",
            SlideFormat::DicomWsi => "native DICOM reader",
            SlideFormat::OpenSlide => "OpenSlide",
        }
    }
}

/// One pyramid level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideLevel {
    pub width: u64,
    pub height: u64,
    pub tile_width: u32,
    pub tile_height: u32,
    pub tiles: u64,
    pub compression: u16,
    pub downsample: f64,
}

/// What ingest records about a slide. Never contains pixel data or associated images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideHeader {
    pub format: SlideFormat,
    pub big_tiff: bool,
    pub levels: Vec<SlideLevel>,
    /// Names of associated images present (label, macro, thumbnail): never decoded into results.
    pub associated: Vec<String>,
    pub microns_per_pixel: Option<f64>,
    pub objective_power: Option<f64>,
    pub scanner: Option<String>,
    /// DICOM slides: the key that joins the slide's files, one slide per series
    /// ([`super::dicom_wsi::series_key`]: a digest of the Series Instance UID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicom_series: Option<String>,
    /// A multi-file slide's other files it cannot be read without (a VMS index's image, map and
    /// macro files), plain names beside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

impl SlideHeader {
    pub fn width(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.width)
    }
    pub fn height(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.height)
    }
}

struct Reader {
    file: File,
    len: u64,
    le: bool,
    big: bool,
}

#[derive(Debug, Default)]
struct Ifd {
    width: u64,
    height: u64,
    tile_w: u32,
    tile_h: u32,
    compression: u16,
    subfile: u32,
    description: Option<String>,
    make: Option<String>,
    model: Option<String>,
    x_res: Option<f64>,
    res_unit: u16,
    tile_offsets: Vec<u64>,
    tile_counts: Vec<u64>,
    strip_offsets: Vec<u64>,
    strip_counts: Vec<u64>,
    photometric: u16,
    samples_per_pixel: u16,
    planar: u16,
    predictor: u16,
    jpeg_tables: Option<Vec<u8>>,
}

/// Where one pyramid level's tiles are and how they are encoded (for the tile reader).
#[derive(Debug, Clone)]
pub struct LevelData {
    pub width: u64,
    pub height: u64,
    pub tile_width: u32,
    pub tile_height: u32,
    pub compression: u16,
    pub photometric: u16,
    pub samples_per_pixel: u16,
    pub planar: u16,
    pub predictor: u16,
    pub jpeg_tables: Option<Vec<u8>>,
    pub tile_offsets: Vec<u64>,
    pub tile_counts: Vec<u64>,
    /// Which of the reader's files each tile is in (DICOM slides span files); empty: the first.
    /// A tile whose count is 0 is absent (TILED_SPARSE) and reads as white.
    pub tile_files: Vec<u32>,
    /// JPEG tiles: take the colour space from the stream's markers and ids (DICOM, as OpenSlide
    /// does) instead of from the TIFF Photometric tag.
    pub jpeg_colour_from_stream: bool,
}

impl Reader {
    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.le { u16::from_le_bytes(a) } else { u16::from_be_bytes(a) }
    }
    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    }
    fn u64(&self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        if self.le { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) }
    }
    fn read_at(&mut self, off: u64, n: u64) -> Result<Vec<u8>, SlideError> {
        if off.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(SlideError::Incomplete(format!(
                "structure at byte {off} (+{n}) lies beyond the end of the file ({} bytes)",
                self.len
            )));
        }
        self.file.seek(SeekFrom::Start(off))?;
        let mut v = vec![0u8; usize::try_from(n).map_err(|_| SlideError::Broken("value too large".into()))?];
        self.file.read_exact(&mut v)?;
        Ok(v)
    }
}

fn type_size(t: u16) -> Option<u64> {
    Some(match t {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => return None,
    })
}

/// The largest tile side accepted (scanners write 240 to 1024; one 4096 x 4096 RGB tile is 48 MiB
/// decoded). Also at most `limits.max_slide_dimension`.
pub const MAX_TILE_SIDE: u64 = 4096;

/// Read a slide's directory structure and check every tile lies inside the file.
pub fn read_slide_header(path: &Path, limits: &Limits) -> Result<SlideHeader, SlideError> {
    read_slide_header_file(File::open(path)?, limits)
}

/// As [`read_slide_header`], on a file the caller opened (ingest opens files beneath the share).
pub fn read_slide_header_file(file: File, limits: &Limits) -> Result<SlideHeader, SlideError> {
    read_slide_layout(file, limits).map(|(h, _)| h)
}

/// The header and, per pyramid level, where its tiles are (for [`super::read::SlideReader`]).
pub fn read_slide_layout(mut file: File, limits: &Limits) -> Result<(SlideHeader, Vec<LevelData>), SlideError> {
    let len = file.metadata()?.len();
    let mut head = [0u8; 16];
    file.seek(SeekFrom::Start(0))?;
    let n = file.read(&mut head)?;
    let (le, big) = sniff_tiff(&head[..n]).ok_or(SlideError::NotTiff)?;
    let mut r = Reader { file, len, le, big };
    let mut next = if big {
        if n < 16 {
            return Err(SlideError::Incomplete("BigTIFF header shorter than 16 bytes".into()));
        }
        r.u64(&head[8..16])
    } else {
        if n < 8 {
            return Err(SlideError::Incomplete("TIFF header shorter than 8 bytes".into()));
        }
        u64::from(r.u32(&head[4..8]))
    };
    let mut ifds = Vec::new();
    let mut seen = HashSet::new();
    while next != 0 {
        if !seen.insert(next) {
            return Err(SlideError::Broken(format!("IFD chain loops back to byte {next}")));
        }
        if ifds.len() as u64 >= u64::from(limits.max_tiff_ifds) {
            return Err(SlideError::OverLimit {
                what: "IFDs",
                value: ifds.len() as u64 + 1,
                limit: u64::from(limits.max_tiff_ifds),
            });
        }
        let (ifd, n2) = read_ifd(&mut r, next, limits)?;
        ifds.push(ifd);
        next = n2;
    }
    if ifds.is_empty() {
        return Err(SlideError::Broken("no image directory".into()));
    }
    build_header(ifds, big, limits)
}

fn read_ifd(r: &mut Reader, off: u64, limits: &Limits) -> Result<(Ifd, u64), SlideError> {
    let (count_size, entry_size, next_size) = if r.big { (8u64, 20u64, 8u64) } else { (2, 12, 4) };
    let cbytes = r.read_at(off, count_size)?;
    let count = if r.big { r.u64(&cbytes) } else { u64::from(r.u16(&cbytes)) };
    if count == 0 || count > 4096 {
        return Err(SlideError::Broken(format!("IFD at byte {off} claims {count} entries")));
    }
    let body = r.read_at(off + count_size, count * entry_size + next_size)?;
    let mut ifd =
        Ifd { res_unit: 2, compression: 1, samples_per_pixel: 1, planar: 1, predictor: 1, ..Default::default() };
    for i in 0..count as usize {
        let e = &body[i * entry_size as usize..(i + 1) * entry_size as usize];
        let tag = r.u16(&e[0..2]);
        let typ = r.u16(&e[2..4]);
        let (n, inline) = if r.big { (r.u64(&e[4..12]), &e[12..20]) } else { (u64::from(r.u32(&e[4..8])), &e[8..12]) };
        let Some(size) = type_size(typ) else { continue };
        let total = n.checked_mul(size).ok_or_else(|| SlideError::Broken(format!("tag {tag} count overflows")))?;
        let wanted = matches!(
            tag,
            254 | 256
                | 257
                | 259
                | 262
                | 270
                | 271
                | 272
                | 273
                | 277
                | 279
                | 282
                | 284
                | 296
                | 317
                | 322
                | 323
                | 324
                | 325
                | 347
        );
        if !wanted {
            continue;
        }
        if matches!(tag, 273 | 279 | 324 | 325) && n > limits.max_slide_tiles {
            return Err(SlideError::OverLimit {
                what: "tiles or strips in one level",
                value: n,
                limit: limits.max_slide_tiles,
            });
        }
        if (tag == 270 || tag == 347) && total > (1 << 20) {
            continue; // an absurd description or table is ignored rather than read
        }
        let data = if total <= inline.len() as u64 {
            inline[..total as usize].to_vec()
        } else {
            let o = if r.big { r.u64(inline) } else { u64::from(r.u32(inline)) };
            r.read_at(o, total)?
        };
        // Each value by its declared type's size (`data` holds exactly n of them). An integer
        // tag written with another type (ASCII, a rational) yields its first bytes as a number,
        // which the checks below refuse or ignore; it never reads past its value.
        let ints = || -> Vec<u64> {
            data.chunks_exact(size as usize)
                .map(|b| match (b, typ) {
                    ([v], _) => u64::from(*v),
                    ([_, _], _) => u64::from(r.u16(b)),
                    (_, 16..=18) => r.u64(b),
                    _ => u64::from(r.u32(b)),
                })
                .collect()
        };
        let text = || String::from_utf8_lossy(&data).trim_end_matches('\0').trim().to_string();
        match tag {
            254 => ifd.subfile = ints().first().copied().unwrap_or(0) as u32,
            256 => ifd.width = ints().first().copied().unwrap_or(0),
            257 => ifd.height = ints().first().copied().unwrap_or(0),
            259 => ifd.compression = ints().first().copied().unwrap_or(1) as u16,
            270 => ifd.description = Some(text()),
            271 => ifd.make = Some(text()),
            272 => ifd.model = Some(text()),
            273 => ifd.strip_offsets = ints(),
            279 => ifd.strip_counts = ints(),
            282 if typ == 5 && data.len() >= 8 => {
                let (num, den) = (r.u32(&data[0..4]), r.u32(&data[4..8]));
                if den != 0 && num != 0 {
                    ifd.x_res = Some(f64::from(num) / f64::from(den));
                }
            }
            296 => ifd.res_unit = ints().first().copied().unwrap_or(2) as u16,
            262 => ifd.photometric = ints().first().copied().unwrap_or(0) as u16,
            277 => ifd.samples_per_pixel = ints().first().copied().unwrap_or(1) as u16,
            284 => ifd.planar = ints().first().copied().unwrap_or(1) as u16,
            317 => ifd.predictor = ints().first().copied().unwrap_or(1) as u16,
            347 => ifd.jpeg_tables = Some(data.clone()),
            322 => ifd.tile_w = ints().first().copied().unwrap_or(0) as u32,
            323 => ifd.tile_h = ints().first().copied().unwrap_or(0) as u32,
            324 => ifd.tile_offsets = ints(),
            325 => ifd.tile_counts = ints(),
            _ => {}
        }
    }
    let nb = &body[(count * entry_size) as usize..];
    let next = if r.big { r.u64(nb) } else { u64::from(r.u32(nb)) };
    check_data_inside(&ifd, r.len, off)?;
    Ok((ifd, next))
}

fn check_data_inside(ifd: &Ifd, len: u64, ifd_off: u64) -> Result<(), SlideError> {
    let pairs = [(&ifd.tile_offsets, &ifd.tile_counts, "tile"), (&ifd.strip_offsets, &ifd.strip_counts, "strip")];
    for (offs, counts, what) in pairs {
        if offs.len() != counts.len() {
            return Err(SlideError::Broken(format!(
                "IFD at byte {ifd_off}: {} {what} offsets but {} byte counts",
                offs.len(),
                counts.len()
            )));
        }
        for (i, (&o, &c)) in offs.iter().zip(counts.iter()).enumerate() {
            if o == 0 || c == 0 {
                return Err(SlideError::Incomplete(format!(
                    "{what} {i} of the IFD at byte {ifd_off} has offset {o} and {c} bytes (not yet written)"
                )));
            }
            if o.checked_add(c).is_none_or(|end| end > len) {
                return Err(SlideError::Incomplete(format!(
                    "{what} {i} of the IFD at byte {ifd_off} ends at byte {} beyond the file's {len} bytes (truncated or still copying)",
                    o.saturating_add(c)
                )));
            }
        }
    }
    Ok(())
}

/// JPEG-LS frames of a DICOM slide. Not a TIFF code (TIFF has none for JPEG-LS): a value of
/// our own, in the private range, that no TIFF file is read with (it is not in
/// `SUPPORTED_COMPRESSION`).
pub const COMPRESSION_JPEG_LS: u16 = 65_080;

/// High-Throughput JPEG 2000 frames of a DICOM slide (transfer syntaxes .201, .202, .203), the
/// colour in YCbCr (`_YCBCR`) or RGB. Private codes, like [`COMPRESSION_JPEG_LS`]: decoded as
/// JPEG 2000 (the same codestream syntax), named apart for people.
pub const COMPRESSION_HTJ2K_YCBCR: u16 = 65_081;
pub const COMPRESSION_HTJ2K_RGB: u16 = 65_082;

/// A tile compression code's name, for people (`crlm wsi info`).
pub fn compression_name(code: u16) -> &'static str {
    match code {
        1 => "none",
        5 => "LZW",
        7 => "JPEG",
        8 | 32946 => "Deflate",
        33003 => "JPEG 2000 (Aperio YCbCr)",
        33005 => "JPEG 2000 (Aperio RGB)",
        34712 => "JPEG 2000",
        COMPRESSION_JPEG_LS => "JPEG-LS",
        COMPRESSION_HTJ2K_YCBCR => "HTJ2K (YCbCr)",
        COMPRESSION_HTJ2K_RGB => "HTJ2K (RGB)",
        _ => "unknown",
    }
}

/// None, LZW, JPEG, Adobe Deflate, Deflate, Aperio JPEG 2000 (YCbCr, RGB), JPEG 2000.
const SUPPORTED_COMPRESSION: [u16; 8] = [1, 5, 7, 8, 32946, 33003, 33005, 34712];

fn build_header(ifds: Vec<Ifd>, big: bool, limits: &Limits) -> Result<(SlideHeader, Vec<LevelData>), SlideError> {
    let first_desc = ifds[0].description.clone().unwrap_or_default();
    let aperio = first_desc.starts_with("Aperio");
    let mut levels = Vec::new();
    let mut level_data = Vec::new();
    let mut associated = Vec::new();
    for (i, ifd) in ifds.iter().enumerate() {
        let desc = ifd.description.as_deref().unwrap_or("").to_ascii_lowercase();
        let tiled = ifd.tile_w > 0 && ifd.tile_h > 0 && !ifd.tile_offsets.is_empty();
        if !tiled {
            let name = if desc.contains("label") {
                "label"
            } else if desc.contains("macro") {
                "macro"
            } else if i == 1 && aperio {
                "thumbnail"
            } else {
                "associated"
            };
            associated.push(name.to_string());
            continue;
        }
        for (what, v) in [("width", ifd.width), ("height", ifd.height)] {
            if v == 0 {
                return Err(SlideError::Broken(format!("tiled IFD {i} has {what} 0")));
            }
            if v > limits.max_slide_dimension {
                return Err(SlideError::OverLimit {
                    what: "level dimension",
                    value: v,
                    limit: limits.max_slide_dimension,
                });
            }
        }
        // A tile is decoded whole into memory: its sides are limited before anything is read
        // (found by fuzzing: a 4-billion-pixel tile asked for 128 GB at the first tile).
        let max_tile = MAX_TILE_SIDE.min(limits.max_slide_dimension);
        for (what, v) in [("tile width", ifd.tile_w), ("tile height", ifd.tile_h)] {
            if u64::from(v) > max_tile {
                return Err(SlideError::OverLimit { what, value: u64::from(v), limit: max_tile });
            }
        }
        if !SUPPORTED_COMPRESSION.contains(&ifd.compression) {
            return Err(SlideError::UnsupportedCompression(ifd.compression));
        }
        let across = ifd.width.div_ceil(u64::from(ifd.tile_w));
        let down = ifd.height.div_ceil(u64::from(ifd.tile_h));
        let tiles = across * down;
        if (ifd.tile_offsets.len() as u64) < tiles {
            return Err(SlideError::Broken(format!(
                "tiled IFD {i} needs {tiles} tiles for {}x{} but lists {}",
                ifd.width,
                ifd.height,
                ifd.tile_offsets.len()
            )));
        }
        // Reduced-resolution levels must shrink; anything else tiled after level 0 is not pyramid.
        if let Some(prev) = levels.last().map(|l: &SlideLevel| l.width)
            && ifd.width >= prev
        {
            associated.push("associated".into());
            continue;
        }
        level_data.push(LevelData {
            width: ifd.width,
            height: ifd.height,
            tile_width: ifd.tile_w,
            tile_height: ifd.tile_h,
            compression: ifd.compression,
            photometric: ifd.photometric,
            samples_per_pixel: ifd.samples_per_pixel,
            planar: ifd.planar,
            predictor: ifd.predictor,
            jpeg_tables: ifd.jpeg_tables.clone(),
            tile_offsets: ifd.tile_offsets.clone(),
            tile_counts: ifd.tile_counts.clone(),
            tile_files: Vec::new(),
            jpeg_colour_from_stream: false,
        });
        levels.push(SlideLevel {
            width: ifd.width,
            height: ifd.height,
            tile_width: ifd.tile_w,
            tile_height: ifd.tile_h,
            tiles,
            compression: ifd.compression,
            downsample: 1.0,
        });
    }
    let Some(base) = levels.first().map(|l| l.width as f64) else {
        return Err(SlideError::NoPyramid);
    };
    for l in &mut levels {
        l.downsample = base / l.width as f64;
    }
    let field = |key: &str| -> Option<String> {
        first_desc.split('|').find_map(|part| {
            let (k, v) = part.split_once('=')?;
            (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_string())
        })
    };
    let mut mpp = if aperio { field("MPP").and_then(|v| v.parse::<f64>().ok()) } else { None };
    if mpp.is_none()
        && let Some(xr) = ifds[0].x_res
    {
        mpp = match ifds[0].res_unit {
            3 => Some(10_000.0 / xr),
            2 => Some(25_400.0 / xr),
            _ => None,
        };
    }
    let mpp = mpp.filter(|m| m.is_finite() && *m > 0.01 && *m < 100.0);
    let objective_power = if aperio { field("AppMag").and_then(|v| v.parse().ok()) } else { None };
    let scanner = match (&ifds[0].make, &ifds[0].model) {
        (Some(a), Some(b)) => Some(format!("{a} {b}")),
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (None, None) if aperio => {
            Some(format!("Aperio{}", field("ScanScope ID").map(|_| " ScanScope").unwrap_or_default()))
        }
        _ => None,
    };
    let header = SlideHeader {
        format: if aperio { SlideFormat::AperioSvs } else { SlideFormat::GenericTiff },
        big_tiff: big,
        levels,
        associated,
        microns_per_pixel: mpp,
        objective_power,
        scanner,
        dicom_series: None,
        members: Vec::new(),
    };
    Ok((header, level_data))
}
