//! Writes tiled pyramidal TIFFs with JPEG tiles (Aperio SVS layout optional): fixtures of tests
//! and the demo slide. Classic little-endian TIFF; each tile is a complete JPEG (YCbCr, 4:4:4).

use super::SlideError;
use std::io::Write;
use std::path::Path;

/// RGB at level-0 pixel (x, y): shared so a generated patient can carry its own tissue.
pub type PixelFn = std::sync::Arc<dyn Fn(u32, u32) -> [u8; 3] + Send + Sync>;

/// What slide to write.
#[derive(Clone)]
pub struct SlideSpec {
    pub width: u32,
    pub height: u32,
    pub tile: u32,
    /// Number of pyramid levels; each halves the previous one.
    pub levels: u32,
    pub microns_per_pixel: f64,
    /// Write an Aperio SVS description (MPP, AppMag, and a Filename field that carries identifiers).
    pub aperio: bool,
    /// Add a label image (stripped, uncompressed), as scanners do; it carries identifiers.
    pub label_text: Option<String>,
    pub jpeg_quality: u8,
    /// JPEG tiles (the scanner default) or uncompressed (exact pixels, for tests).
    pub uncompressed: bool,
    /// RGB at level-0 pixel (x, y).
    pub pixel: PixelFn,
}

impl SlideSpec {
    pub fn small(width: u32, height: u32) -> Self {
        SlideSpec {
            width,
            height,
            tile: 256,
            levels: 3,
            microns_per_pixel: 0.5,
            aperio: true,
            label_text: Some("PATIENT LABEL".into()),
            jpeg_quality: 90,
            uncompressed: false,
            pixel: std::sync::Arc::new(he_like_pixel),
        }
    }
}

/// Pink tissue islands with purple nuclei on a white background: enough for a tissue mask.
pub fn he_like_pixel(x: u32, y: u32) -> [u8; 3] {
    let (fx, fy) = (f64::from(x), f64::from(y));
    let blob = ((fx / 180.0).sin() * (fy / 140.0).cos() + 0.35 * (fx / 37.0).sin()).abs();
    if blob < 0.45 {
        return [242, 240, 244];
    }
    let nucleus = ((fx / 9.0).sin() * (fy / 11.0).sin()) > 0.8;
    if nucleus { [92, 58, 140] } else { [221, 140, 184] }
}

struct Entry {
    tag: u16,
    typ: u16,
    count: u32,
    data: Vec<u8>,
}

fn short(tag: u16, v: &[u16]) -> Entry {
    Entry { tag, typ: 3, count: v.len() as u32, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
}
fn long(tag: u16, v: &[u32]) -> Entry {
    Entry { tag, typ: 4, count: v.len() as u32, data: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
}
fn ascii(tag: u16, s: &str) -> Entry {
    let mut d = s.as_bytes().to_vec();
    d.push(0);
    Entry { tag, typ: 2, count: d.len() as u32, data: d }
}
fn rational(tag: u16, num: u32, den: u32) -> Entry {
    let mut d = num.to_le_bytes().to_vec();
    d.extend_from_slice(&den.to_le_bytes());
    Entry { tag, typ: 5, count: 1, data: d }
}

/// Write the slide. Tile data first, then the directories, so a reader sees a valid chain only
/// once everything it points to exists.
pub fn write_pyramidal_tiff(path: &Path, spec: &SlideSpec) -> Result<(), SlideError> {
    if spec.tile == 0 || !spec.tile.is_multiple_of(16) {
        return Err(SlideError::Encode("tile size must be a positive multiple of 16".into()));
    }
    let mut out: Vec<u8> = b"II*\0\0\0\0\0".to_vec();
    let mut dirs: Vec<Vec<Entry>> = Vec::new();
    for level in 0..spec.levels.max(1) {
        let ds = 1u32 << level;
        let (w, h) = (spec.width.div_ceil(ds).max(1), spec.height.div_ceil(ds).max(1));
        let (across, down) = (w.div_ceil(spec.tile), h.div_ceil(spec.tile));
        let mut offsets = Vec::new();
        let mut counts = Vec::new();
        let mut rgb = vec![0u8; (spec.tile * spec.tile * 3) as usize];
        for ty in 0..down {
            for tx in 0..across {
                for y in 0..spec.tile {
                    for x in 0..spec.tile {
                        let (lx, ly) = (tx * spec.tile + x, ty * spec.tile + y);
                        let p = if lx < w && ly < h { (spec.pixel)(lx * ds, ly * ds) } else { [255, 255, 255] };
                        let i = ((y * spec.tile + x) * 3) as usize;
                        rgb[i..i + 3].copy_from_slice(&p);
                    }
                }
                let jpeg = if spec.uncompressed {
                    rgb.clone()
                } else {
                    let mut jpeg = Vec::new();
                    let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, spec.jpeg_quality);
                    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
                    let side = u16::try_from(spec.tile).map_err(|_| SlideError::Encode("tile too large".into()))?;
                    enc.encode(&rgb, side, side, jpeg_encoder::ColorType::Rgb)
                        .map_err(|e| SlideError::Encode(e.to_string()))?;
                    jpeg
                };
                offsets.push(out.len() as u32);
                counts.push(jpeg.len() as u32);
                out.extend_from_slice(&jpeg);
            }
        }
        let mut e = vec![
            long(254, &[u32::from(level > 0)]),
            long(256, &[w]),
            long(257, &[h]),
            short(258, &[8, 8, 8]),
            short(259, &[if spec.uncompressed { 1 } else { 7 }]),
            short(262, &[if spec.uncompressed { 2 } else { 6 }]),
            short(277, &[3]),
            short(284, &[1]),
            short(322, &[spec.tile as u16]),
            short(323, &[spec.tile as u16]),
            long(324, &offsets),
            long(325, &counts),
            short(530, &[1, 1]),
        ];
        if level == 0 {
            let res = (10_000.0 / spec.microns_per_pixel).round() as u32;
            e.push(rational(282, res, 1));
            e.push(rational(283, res, 1));
            e.push(short(296, &[3]));
            e.push(ascii(271, "CRLM-EDGE"));
            e.push(ascii(272, "SYNTHETIC SLIDE WRITER"));
            let desc = if spec.aperio {
                format!(
                    "Aperio Image Library v12.0.0\r\n{w}x{h} ({t}x{t}) JPEG/RGB Q={q}|AppMag = 20|MPP = {mpp}|Filename = {name}|Date = 03/01/26",
                    t = spec.tile,
                    q = spec.jpeg_quality,
                    mpp = spec.microns_per_pixel,
                    name = spec.label_text.as_deref().unwrap_or("slide"),
                )
            } else {
                "crlm-edge synthetic pyramidal TIFF".to_string()
            };
            e.push(ascii(270, &desc));
        }
        dirs.push(e);
    }
    if let Some(label) = &spec.label_text {
        // A small uncompressed RGB label image in one strip.
        let (lw, lh) = (64u32, 32u32);
        let seed = label.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        let pixels: Vec<u8> = (0..lw * lh * 3).map(|i| (i as u8).wrapping_mul(seed | 1)).collect();
        let off = out.len() as u32;
        out.extend_from_slice(&pixels);
        dirs.push(vec![
            long(254, &[1]),
            long(256, &[lw]),
            long(257, &[lh]),
            short(258, &[8, 8, 8]),
            short(259, &[1]),
            short(262, &[2]),
            ascii(270, &format!("label {lw}x{lh}")),
            long(273, &[off]),
            short(277, &[3]),
            long(278, &[lh]),
            long(279, &[pixels.len() as u32]),
        ]);
    }
    // Directories, chained.
    let mut first_ifd = 0u32;
    let mut prev_next_field: Option<usize> = None;
    for mut entries in dirs {
        entries.sort_by_key(|e| e.tag);
        if !out.len().is_multiple_of(2) {
            out.push(0);
        }
        let ifd_off = out.len() as u32;
        match prev_next_field {
            Some(pos) => out[pos..pos + 4].copy_from_slice(&ifd_off.to_le_bytes()),
            None => first_ifd = ifd_off,
        }
        let n = entries.len();
        let mut extra_off = ifd_off as usize + 2 + n * 12 + 4;
        let mut extra: Vec<u8> = Vec::new();
        out.extend_from_slice(&(n as u16).to_le_bytes());
        for e in &entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.typ.to_le_bytes());
            out.extend_from_slice(&e.count.to_le_bytes());
            if e.data.len() <= 4 {
                let mut v = e.data.clone();
                v.resize(4, 0);
                out.extend_from_slice(&v);
            } else {
                out.extend_from_slice(&(extra_off as u32).to_le_bytes());
                extra.extend_from_slice(&e.data);
                extra_off += e.data.len();
                if !extra_off.is_multiple_of(2) {
                    extra.push(0);
                    extra_off += 1;
                }
            }
        }
        prev_next_field = Some(out.len());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&extra);
    }
    out[4..8].copy_from_slice(&first_ifd.to_le_bytes());
    let mut f = std::fs::File::create(path)?;
    f.write_all(&out)?;
    f.sync_all()?;
    Ok(())
}
