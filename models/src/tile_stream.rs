//! The tile stream: a case's slides become tile embeddings batch by batch. One thread reads and
//! decodes a batch of tiles (on `threads` threads) and normalises it while the calling thread
//! runs the tile encoder on the batch before; a bounded channel between them holds at most one
//! batch. Memory is therefore a few batches of pixels plus the embeddings (`[N, E]` fp32), never
//! the slide's pixels: 16,578 tiles of 1024 wide embeddings are 68 MB, their 224 px pixels
//! would be 12 GB in fp32.

use crate::backend::Backend;
use crate::error::ModelError;
use crate::slide::sample::ModelTiles;
use std::sync::mpsc::sync_channel;

/// Tile embeddings of a case, in the order of its slides and their tiles.
#[derive(Debug, Clone, PartialEq)]
pub struct TileEmbeddings {
    /// `[n, width]`, row-major.
    pub values: Vec<f32>,
    pub n: usize,
    pub width: usize,
}

/// `(pixel / 255 - mean) / std` per channel, from interleaved RGB rows to `[N, 3, T, T]`.
pub fn normalise(pixels: &[u8], side: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = side * side;
    let per = plane * 3;
    let mut out = vec![0f32; pixels.len() / per * per];
    for (tile, dst) in pixels.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
        let (r, gb) = dst.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        for (i, px) in tile.chunks_exact(3).enumerate() {
            if let (Some(r), Some(g), Some(b), [pr, pg, pb]) = (r.get_mut(i), g.get_mut(i), b.get_mut(i), px) {
                *r = (f32::from(*pr) / 255.0 - mean[0]) / std[0];
                *g = (f32::from(*pg) / 255.0 - mean[1]) / std[1];
                *b = (f32::from(*pb) / 255.0 - mean[2]) / std[2];
            }
        }
    }
    out
}

/// How tiles are turned into the encoder's input.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Tiles per encoder run.
    pub batch: usize,
    /// Threads reading and decoding tiles.
    pub threads: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Every tile of `slides` through the backend's tile encoder, reading the next batch while the
/// encoder runs on this one.
pub fn encode_tiles(
    backend: &dyn Backend,
    slides: &[ModelTiles],
    opts: StreamOptions,
) -> Result<TileEmbeddings, ModelError> {
    let batch = opts.batch.max(1);
    let total: usize = slides.iter().map(|m| m.tiles.len()).sum();
    let mut out = TileEmbeddings { values: Vec::new(), n: 0, width: 0 };
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Result<(Vec<f32>, usize), ModelError>>(1);
        s.spawn(move || {
            for m in slides {
                let side = m.tile_px as usize;
                for start in (0..m.tiles.len()).step_by(batch) {
                    let end = (start + batch).min(m.tiles.len());
                    let msg = m
                        .read(start..end, opts.threads)
                        .map(|px| (normalise(&px, side, opts.mean, opts.std), end - start))
                        .map_err(|e| ModelError::Input(format!("reading tiles: {e}")));
                    let failed = msg.is_err();
                    // The encoder stopped (an error): stop reading.
                    if tx.send(msg).is_err() || failed {
                        return;
                    }
                }
            }
        });
        for msg in rx {
            let (data, n) = msg?;
            let h = backend.embed_tiles(&data, n)?;
            drop(data);
            if n == 0 || h.len() % n != 0 {
                return Err(ModelError::Inference(format!("the tile encoder gave {} values for {n} tiles", h.len())));
            }
            let width = h.len() / n;
            if out.n == 0 {
                out.width = width;
                out.values.reserve_exact(total.saturating_mul(width));
            } else if width != out.width {
                return Err(ModelError::Inference(format!(
                    "the tile encoder gave {width} values per tile, {} before",
                    out.width
                )));
            }
            out.values.extend_from_slice(&h);
            out.n += n;
        }
        Ok(())
    })?;
    if out.n != total {
        return Err(ModelError::Inference(format!("{} of {total} tiles were encoded", out.n)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_is_planar_per_channel() {
        let px = [255u8, 0, 51, 0, 255, 102, 255, 255, 0, 0, 0, 0];
        let v = normalise(&px, 2, [0.5, 0.0, 0.0], [0.5, 1.0, 2.0]);
        assert_eq!(&v[0..4], &[1.0, -1.0, 1.0, -1.0]);
        assert_eq!(&v[4..8], &[0.0, 1.0, 1.0, 0.0]);
        assert_eq!(&v[8..12], &[0.1, 0.2, 0.0, 0.0]);
    }
}
