//! Tissue mask and tile grid. The mask is computed on a low-resolution level: Otsu's threshold on
//! saturation (H&E tissue is coloured, glass is not), minus near-white and very dark pixels and
//! pen-like colours (blue or green dominance), then a 5x5 closing and a 3x3 opening. Tiles are laid on a
//! level-0 grid at the requested microns per pixel, in row-major order (deterministic), and kept
//! when their tissue fraction reaches the threshold.

use super::SlideError;
use super::read::SlideReader;
use serde::Serialize;

/// Largest mask edge (pixels): the mask level is the first level at most this wide.
pub const MASK_MAX_EDGE: u64 = 2048;

#[derive(Debug, Clone)]
pub struct TissueMask {
    /// The level the mask was computed on, and its downsample from level 0.
    pub level: usize,
    pub downsample: f64,
    pub width: u32,
    pub height: u32,
    /// 1 = tissue, row-major.
    pub mask: Vec<u8>,
    pub otsu_threshold: u8,
}

impl TissueMask {
    pub fn tissue_fraction(&self) -> f64 {
        self.mask.iter().filter(|v| **v != 0).count() as f64 / self.mask.len().max(1) as f64
    }
}

/// A tile in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tile {
    pub x: u64,
    pub y: u64,
    /// Edge length in level-0 pixels.
    pub size: u64,
    pub tissue: f64,
}

pub fn tissue_mask(reader: &SlideReader) -> Result<TissueMask, SlideError> {
    let levels = &reader.header.levels;
    let level = levels.iter().position(|l| l.width.max(l.height) <= MASK_MAX_EDGE).unwrap_or(levels.len() - 1);
    let l = &levels[level];
    let (w, h) = (l.width as u32, l.height as u32);
    let rgb = reader.read_region(level, 0, 0, w, h)?;
    let n = (w * h) as usize;
    let mut sat = vec![0u8; n];
    let mut usable = vec![false; n];
    for (i, p) in rgb.pixels.chunks_exact(3).enumerate() {
        let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
        let (mx, mn) = (r.max(g).max(b), r.min(g).min(b));
        sat[i] = if mx == 0 { 0 } else { ((mx - mn) * 255 / mx) as u8 };
        let bright = mn > 225; // glass
        let dark = mx < 40; // folds, dust, black pen
        let pen = (b > r + 30 && b > g) || (g > r + 20 && g > b + 20); // blue or green ink
        usable[i] = !(bright || dark || pen);
    }
    // Otsu over every pixel: glass (unsaturated) against tissue, the split that matters.
    let t = otsu(sat.iter().copied());
    let raw: Vec<u8> = sat.iter().zip(&usable).map(|(s, u)| u8::from(*u && *s > t)).collect();
    // Close (5x5) to fill nuclei and pale gaps, then open (3x3) to drop specks.
    let closed = erode(&erode(&dilate(&dilate(&raw, w, h), w, h), w, h), w, h);
    let closed = dilate(&erode(&closed, w, h), w, h);
    Ok(TissueMask { level, downsample: l.downsample, width: w, height: h, mask: closed, otsu_threshold: t })
}

fn otsu(values: impl Iterator<Item = u8>) -> u8 {
    let mut hist = [0u64; 256];
    let mut total = 0u64;
    for v in values {
        hist[usize::from(v)] += 1;
        total += 1;
    }
    if total == 0 {
        return 255;
    }
    let sum: f64 = hist.iter().enumerate().map(|(i, c)| i as f64 * *c as f64).sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0f64, 0f64, -1f64, 0u8);
    for (t, c) in hist.iter().enumerate() {
        w0 += *c as f64;
        if w0 == 0.0 {
            continue;
        }
        let w1 = total as f64 - w0;
        if w1 == 0.0 {
            break;
        }
        sum0 += t as f64 * *c as f64;
        let (m0, m1) = (sum0 / w0, (sum - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

fn morph(m: &[u8], w: u32, h: u32, keep: fn(u8, u8) -> u8, init: u8) -> Vec<u8> {
    let (w, h) = (w as i64, h as i64);
    let mut out = vec![0u8; m.len()];
    for y in 0..h {
        for x in 0..w {
            let mut v = init;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx >= 0 && yy >= 0 && xx < w && yy < h {
                        v = keep(v, m[(yy * w + xx) as usize]);
                    }
                }
            }
            out[(y * w + x) as usize] = v;
        }
    }
    out
}

fn erode(m: &[u8], w: u32, h: u32) -> Vec<u8> {
    morph(m, w, h, u8::min, 1)
}

fn dilate(m: &[u8], w: u32, h: u32) -> Vec<u8> {
    morph(m, w, h, u8::max, 0)
}

/// Tiles of `tile_px` pixels at `mpp` microns per pixel, in level-0 coordinates, row-major,
/// kept when at least `min_tissue` of their area is tissue in the mask.
pub fn tile_grid(
    reader: &SlideReader,
    mask: &TissueMask,
    mpp: f64,
    tile_px: u32,
    min_tissue: f64,
) -> Result<Vec<Tile>, SlideError> {
    let mpp0 = reader.header.microns_per_pixel.ok_or_else(|| {
        SlideError::Broken("the slide has no microns-per-pixel (no MPP, no resolution tags): configure it".into())
    })?;
    let size = ((f64::from(tile_px) * mpp / mpp0).round() as u64).max(1);
    let (w0, h0) = (reader.header.width(), reader.header.height());
    let mut tiles = Vec::new();
    let to_mask = |v: u64| (v as f64 / mask.downsample) as i64;
    for ty in 0..h0 / size {
        for tx in 0..w0 / size {
            let (x, y) = (tx * size, ty * size);
            let (mx0, my0) = (to_mask(x), to_mask(y));
            let (mx1, my1) = (to_mask(x + size).max(mx0 + 1), to_mask(y + size).max(my0 + 1));
            let (mut inside, mut count) = (0u64, 0u64);
            for my in my0..my1.min(i64::from(mask.height)) {
                for mx in mx0..mx1.min(i64::from(mask.width)) {
                    count += 1;
                    inside += u64::from(mask.mask[(my * i64::from(mask.width) + mx) as usize]);
                }
            }
            let tissue = if count == 0 { 0.0 } else { inside as f64 / count as f64 };
            if tissue >= min_tissue {
                tiles.push(Tile { x, y, size, tissue });
            }
        }
    }
    Ok(tiles)
}
