//! Model tiles from a slide: the tissue grid at the package's microns per pixel, a deterministic
//! selection, and where their pixels are: the pyramid level nearest (not coarser than) that
//! resolution, resized to the package's tile side when the level does not match exactly.
//!
//! The plan holds no pixels. They are read in batches ([`ModelTiles::read`]) while the model
//! encodes the batch before (`inference::encode_tiles`), so memory is bounded by the batch, not
//! by the slide.

use super::SlideError;
use super::read::{Rgb, SlideReader};
use super::tissue::{Tile, tile_grid, tissue_mask};
use crate::package::spec::{SlideInputSpec, TileSampling};
use std::ops::Range;
use std::sync::Arc;

/// Tiles chosen from one slide, and the open slide to read their pixels from.
#[derive(Clone)]
pub struct ModelTiles {
    pub tiles: Vec<Tile>,
    /// How many tissue tiles the grid had before selection.
    pub tissue_tiles: usize,
    pub level: usize,
    pub tile_px: u32,
    /// Side of the square read at `level` for each tile (resized to `tile_px` when different).
    pub read_px: u32,
    reader: Arc<SlideReader>,
}

impl std::fmt::Debug for ModelTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTiles")
            .field("tiles", &self.tiles.len())
            .field("tissue_tiles", &self.tissue_tiles)
            .field("level", &self.level)
            .field("tile_px", &self.tile_px)
            .field("read_px", &self.read_px)
            .finish()
    }
}

impl ModelTiles {
    /// SHA-256 of the slide file the tiles come from.
    pub fn slide_sha256(&self) -> Result<String, SlideError> {
        self.reader.sha256()
    }

    /// RGB pixels (`tile_px` x `tile_px`, rows, interleaved) of the tiles `range`, one after
    /// the other, read with `threads` threads.
    pub fn read(&self, range: Range<usize>, threads: usize) -> Result<Vec<u8>, SlideError> {
        let tiles = self
            .tiles
            .get(range.clone())
            .ok_or_else(|| SlideError::Broken(format!("tiles {range:?} asked of a plan with {}", self.tiles.len())))?;
        let side = self.tile_px as usize;
        let tile_bytes = side * side * 3;
        let origins: Vec<(i64, i64)> = tiles.iter().map(|t| (t.x as i64, t.y as i64)).collect();
        let mut pixels = vec![0u8; tile_bytes * tiles.len()];
        self.reader.read_regions_parallel(self.level, &origins, self.read_px, threads, |i, rgb| {
            let out = pixels
                .get_mut(i * tile_bytes..(i + 1) * tile_bytes)
                .ok_or_else(|| SlideError::Broken("a tile beyond the batch".into()))?;
            if rgb.width == self.tile_px && rgb.pixels.len() == tile_bytes {
                out.copy_from_slice(&rgb.pixels);
            } else {
                resize_into(&rgb, self.tile_px, out);
            }
            Ok(())
        })?;
        Ok(pixels)
    }
}

/// Choose at most `max` of `grid` by the package's rule; order stays reading order.
pub fn select(grid: &[Tile], max: usize, rule: TileSampling) -> Vec<Tile> {
    if grid.len() <= max {
        return grid.to_vec();
    }
    match rule {
        TileSampling::Even => (0..max).map(|i| grid[i * grid.len() / max]).collect(),
        TileSampling::MostTissue => {
            let mut idx: Vec<usize> = (0..grid.len()).collect();
            idx.sort_by(|a, b| grid[*b].tissue.total_cmp(&grid[*a].tissue).then(a.cmp(b)));
            idx.truncate(max);
            idx.sort_unstable();
            idx.into_iter().map(|i| grid[i]).collect()
        }
    }
}

/// Tissue tiles of the slide, at most `max`, and where to read them.
pub fn sample_tiles(reader: Arc<SlideReader>, spec: &SlideInputSpec, max: usize) -> Result<ModelTiles, SlideError> {
    let mask = tissue_mask(&reader)?;
    let grid = tile_grid(&reader, &mask, spec.microns_per_pixel, spec.tile_px, spec.min_tissue)?;
    let tiles = select(&grid, max, spec.sampling);
    // The coarsest level that is still at least as fine as the package's resolution.
    let size0 = tiles.first().map_or(1, |t| t.size) as f64;
    let wanted_ds = size0 / f64::from(spec.tile_px);
    let level = reader
        .header
        .levels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.downsample <= wanted_ds * 1.001)
        .max_by(|a, b| a.1.downsample.total_cmp(&b.1.downsample))
        .map_or(0, |(i, _)| i);
    let ds = reader.header.levels.get(level).map_or(1.0, |l| l.downsample);
    let read_px = ((size0 / ds).round() as u32).max(1);
    Ok(ModelTiles { tiles, tissue_tiles: grid.len(), level, tile_px: spec.tile_px, read_px, reader })
}

/// Area-weighted (box) resampling of a square image to `side` x `side`: exact averages for
/// integer factors, and no aliasing when shrinking by other factors.
fn resize_into(src: &Rgb, side: u32, out: &mut [u8]) {
    let scale = f64::from(src.width) / f64::from(side);
    for oy in 0..side {
        let (y0, y1) = (f64::from(oy) * scale, f64::from(oy + 1) * scale);
        for ox in 0..side {
            let (x0, x1) = (f64::from(ox) * scale, f64::from(ox + 1) * scale);
            let mut acc = [0f64; 3];
            let mut wsum = 0.0;
            let mut sy = y0.floor() as u32;
            while f64::from(sy) < y1 && sy < src.height {
                let wy = (f64::from(sy + 1).min(y1) - f64::from(sy).max(y0)).max(0.0);
                let mut sx = x0.floor() as u32;
                while f64::from(sx) < x1 && sx < src.width {
                    let wx = (f64::from(sx + 1).min(x1) - f64::from(sx).max(x0)).max(0.0);
                    let i = ((sy * src.width + sx) * 3) as usize;
                    for (a, v) in acc.iter_mut().zip(&src.pixels[i..i + 3]) {
                        *a += wx * wy * f64::from(*v);
                    }
                    wsum += wx * wy;
                    sx += 1;
                }
                sy += 1;
            }
            let o = ((oy * side + ox) * 3) as usize;
            for (dst, a) in out[o..o + 3].iter_mut().zip(acc) {
                *dst = if wsum > 0.0 { (a / wsum).round() as u8 } else { 255 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: u64, tissue: f64) -> Tile {
        Tile { x: i, y: 0, size: 1, tissue }
    }

    #[test]
    fn selection_is_deterministic_and_bounded() {
        let grid: Vec<Tile> = (0..10).map(|i| t(i, (i % 3) as f64)).collect();
        let even = select(&grid, 4, TileSampling::Even);
        assert_eq!(even.iter().map(|t| t.x).collect::<Vec<_>>(), [0, 2, 5, 7]);
        let most = select(&grid, 3, TileSampling::MostTissue);
        assert_eq!(most.iter().map(|t| t.x).collect::<Vec<_>>(), [2, 5, 8]);
        assert_eq!(select(&grid, 20, TileSampling::Even).len(), 10);
    }

    #[test]
    fn box_resize_averages() {
        let src =
            Rgb { width: 4, height: 4, pixels: (0..48).map(|i| if (i / 3) % 2 == 0 { 0 } else { 200 }).collect() };
        let mut out = vec![0u8; 2 * 2 * 3];
        resize_into(&src, 2, &mut out);
        assert!(out.iter().all(|v| *v == 100), "{out:?}");
    }
}
