//! The tile-embedding cache: a slide's tile embeddings kept on disk, keyed by the slide file's
//! SHA-256, the package hash and the tile plan (every tile's position, the level, the read
//! size), so re-running a case (a corrected clinical file, a resumed crash) does not encode
//! thousands of tiles again. A hit gives the very values the encoder gave: the prediction is
//! bit-identical. Bounded: after each write the least recently used entries go until the cache
//! is under its size. An entry that does not check out (short, wrong header, wrong checksum) is
//! deleted and the tiles are encoded again.
//!
//! Entry: `<key>.emb` = magic `CRLMEMB1`, n (u64 LE), width (u64 LE), SHA-256 of the values (32
//! bytes), then n x width f32 LE.

use crate::slide::sample::ModelTiles;
use crate::tile_stream::TileEmbeddings;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"CRLMEMB1";
const HEADER: usize = 8 + 8 + 8 + 32;

#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// The key of one slide's embeddings under one package.
pub fn key(package_sha256: &str, slide_sha256: &str, plan: &ModelTiles) -> String {
    let mut h = Sha256::new();
    h.update(package_sha256.as_bytes());
    h.update([0]);
    h.update(slide_sha256.as_bytes());
    h.update([0]);
    for v in [plan.level as u64, u64::from(plan.read_px), u64::from(plan.tile_px), plan.tiles.len() as u64] {
        h.update(v.to_le_bytes());
    }
    for t in &plan.tiles {
        h.update(t.x.to_le_bytes());
        h.update(t.y.to_le_bytes());
        h.update(t.size.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn values_digest(values: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().into()
}

impl EmbeddingCache {
    /// A cache in `dir` (made when first written) of at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        EmbeddingCache { dir, max_bytes }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.emb"))
    }

    /// The embeddings stored under `key`, when there are good ones.
    pub fn get(&self, key: &str) -> Option<TileEmbeddings> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let parsed = parse(&bytes);
        match parsed {
            Some(e) => {
                // Recently used: evicted last.
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                Some(e)
            }
            None => {
                tracing::warn!(path = %path.display(), "a tile-embedding cache entry does not check out; encoding again");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store `e` under `key` (atomically), then evict the least recently used entries until the
    /// cache is under its size. A cache that cannot be written is logged, never an error.
    pub fn put(&self, key: &str, e: &TileEmbeddings) {
        let size = (HEADER + e.values.len() * 4) as u64;
        if size > self.max_bytes {
            return;
        }
        let mut bytes = Vec::with_capacity(size as usize);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(e.n as u64).to_le_bytes());
        bytes.extend_from_slice(&(e.width as u64).to_le_bytes());
        bytes.extend_from_slice(&values_digest(&e.values));
        for v in &e.values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|_| crlm_core::fsutil::write_atomic(&self.path(key), &bytes, 0o600));
        if let Err(err) = written {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot write the tile-embedding cache");
            return;
        }
        self.evict();
    }

    /// Remove the least recently used entries until the cache is at most its size.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "emb"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}

fn parse(bytes: &[u8]) -> Option<TileEmbeddings> {
    let magic = bytes.get(..8)?;
    let n = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    let width = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?);
    let digest = bytes.get(24..HEADER)?;
    let body = bytes.get(HEADER..)?;
    let count = usize::try_from(n.checked_mul(width)?).ok()?;
    if magic != MAGIC || body.len() != count.checked_mul(4)? {
        return None;
    }
    let values: Vec<f32> = body.chunks_exact(4).filter_map(|c| c.try_into().ok().map(f32::from_le_bytes)).collect();
    if values_digest(&values).as_slice() != digest {
        return None;
    }
    Some(TileEmbeddings { values, n: usize::try_from(n).ok()?, width: usize::try_from(width).ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emb(n: usize, seed: f32) -> TileEmbeddings {
        TileEmbeddings { values: (0..n * 4).map(|i| i as f32 * seed).collect(), n, width: 4 }
    }

    #[test]
    fn round_trip_corruption_and_eviction() {
        let tmp = tempfile::tempdir().unwrap();
        let c = EmbeddingCache::new(tmp.path().join("emb"), 3 * (HEADER as u64 + 10 * 16));
        assert!(c.get("a").is_none());
        c.put("a", &emb(10, 0.5));
        assert_eq!(c.get("a"), Some(emb(10, 0.5)));
        // A flipped byte: not returned, and removed.
        let p = c.path("a");
        let mut b = std::fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(c.get("a").is_none());
        assert!(!p.exists());
        // Four entries in a cache for three: the least recently used goes.
        for (i, k) in ["k1", "k2", "k3"].iter().enumerate() {
            c.put(k, &emb(10, i as f32));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(c.get("k1").is_some()); // k1 is now the most recently used
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.put("k4", &emb(10, 9.0));
        assert!(c.get("k2").is_none(), "k2 was the least recently used");
        assert!(c.get("k1").is_some() && c.get("k3").is_some() && c.get("k4").is_some());
    }
}
