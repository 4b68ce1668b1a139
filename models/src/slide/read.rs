//! Reading slide pixels: tiles of a pyramid level, and regions in level-0 coordinates like
//! OpenSlide's `read_region`, from TIFF/SVS files and DICOM slides (a series of files:
//! [`super::dicom_wsi`]). JPEG tiles (libjpeg-turbo; with the level's shared JPEGTables spliced
//! in; YCbCr or RGB as the photometric tag says, or as the stream says for DICOM), JPEG 2000,
//! JPEG-LS (DICOM frames, CharLS),
//! uncompressed, LZW and Deflate (with the horizontal predictor). Associated images are never
//! read here.

use super::SlideError;
use super::tiff::{LevelData, SlideHeader, read_slide_layout};
use crate::limits::Limits;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Largest region one call may return (pixels), checked before allocating.
pub const MAX_REGION_PIXELS: u64 = 64 << 20;

pub struct SlideReader {
    /// The slide's files: one for TIFF, the series' level files for DICOM.
    files: Vec<File>,
    pub header: SlideHeader,
    levels: Vec<LevelData>,
    /// The ICC profile the slide carries (DICOM), for whoever displays it; pixels are as stored.
    pub icc_profile: Option<Vec<u8>>,
    /// Another scanner's slide, read through OpenSlide (regions only; no native levels).
    #[cfg(feature = "openslide")]
    openslide: Option<super::openslide::OpenSlide>,
}

/// OpenSlide's vendors the native readers handle themselves (the fast path).
#[cfg(feature = "openslide")]
const NATIVE_VENDORS: [&str; 3] = ["aperio", "generic-tiff", "dicom"];

/// An RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl SlideReader {
    /// Open a TIFF/SVS slide, the DICOM slide `path` is a file of (with its series' other files
    /// in the same folder), or, with feature `openslide` and OpenSlide installed, another
    /// scanner's slide (NDPI, MRXS, SCN, BIF, Philips TIFF, VMS) through OpenSlide. A VMS or
    /// MRXS slide is opened by its `.vms`/`.mrxs` file or by its index (`.vms`, `Slidedat.ini`).
    pub fn open(path: &Path, limits: &Limits) -> Result<Self, SlideError> {
        let file = File::open(path)?;
        let mut head = [0u8; 256];
        let n = crate::dicom::read_prefix(&file, &mut head)?;
        let reader = |files, header, levels, icc_profile| SlideReader {
            files,
            header,
            levels,
            icc_profile,
            #[cfg(feature = "openslide")]
            openslide: None,
        };
        if crate::dicom::sniff_dicom(head.get(..n).unwrap_or(&[])).is_some() {
            let s = super::dicom_wsi::open_series(path, limits)?;
            return Ok(reader(s.files, s.header, s.levels, s.icc_profile));
        }
        // A multi-file slide's index (VMS, MRXS Slidedat.ini): OpenSlide reads the slide and
        // the files the index names. Those are opened here too, so the slide's hash covers every
        // file its pixels come from.
        if let Some(kind) = super::index::sniff(head.get(..n).unwrap_or(&[])) {
            let index = super::index::SlideIndex::read(kind, &file, path)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut files = vec![file];
            // Never through a link: a part is a plain file beside the index (ELOOP otherwise).
            let open = |m: &str| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(super::index::member_path(dir, m))
            };
            for m in index.required() {
                let f = open(&m).map_err(|e| {
                    SlideError::Index(if e.raw_os_error() == Some(libc::ELOOP) {
                        "a file the slide's index names is a symbolic link; parts are read only as plain files".into()
                    } else {
                        format!("a file the slide's index names cannot be opened ({})", e.kind())
                    })
                })?;
                files.push(f);
            }
            files.extend(index.optional().iter().filter_map(|m| open(m).ok()));
            let header = super::index_header(path, &index, limits)?;
            #[allow(unused_mut)]
            let mut r = reader(files, header, Vec::new(), None);
            #[cfg(feature = "openslide")]
            if let Some(open) = index.open_path(path) {
                r.openslide = Some(super::openslide::OpenSlide::open(&open, limits)?.0);
            }
            return Ok(r);
        }
        // OPENSLIDE_READS_ALL=1 sends every slide OpenSlide reads through it (an operator's
        // way round a native reader that misreads some scanner's file; also how the FFI is tested).
        #[cfg(feature = "openslide")]
        if let Some(vendor) = super::openslide::detect_vendor(path)
            && (!NATIVE_VENDORS.contains(&vendor.as_str())
                || std::env::var("OPENSLIDE_READS_ALL").is_ok_and(|v| v == "1"))
        {
            let (slide, header) = super::openslide::OpenSlide::open(path, limits)?;
            let mut r = reader(vec![file], header, Vec::new(), None);
            r.openslide = Some(slide);
            return Ok(r);
        }
        let (header, levels) = read_slide_layout(file.try_clone()?, limits)?;
        Ok(reader(vec![file], header, levels, None))
    }

    /// How many files the slide spans (1 for TIFF; a DICOM slide's level files).
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn level_count(&self) -> usize {
        self.header.levels.len()
    }

    /// Decode tile (tx, ty) of `level` to RGB (tile_width x tile_height, edge tiles included whole).
    pub fn read_tile(&self, level: usize, tx: u32, ty: u32) -> Result<Rgb, SlideError> {
        #[cfg(feature = "openslide")]
        if let Some(o) = &self.openslide {
            let l = self.header.levels.get(level).ok_or_else(|| SlideError::Broken(format!("no level {level}")))?;
            let (w, h) = (l.tile_width, l.tile_height);
            let x = (f64::from(tx) * f64::from(w) * l.downsample).round() as i64;
            let y = (f64::from(ty) * f64::from(h) * l.downsample).round() as i64;
            return Ok(Rgb { width: w, height: h, pixels: o.read_region(level, x, y, w, h)? });
        }
        let l = self.levels.get(level).ok_or_else(|| SlideError::Broken(format!("no level {level}")))?;
        let across = l.width.div_ceil(u64::from(l.tile_width)) as u32;
        let idx = (ty as usize) * across as usize + tx as usize;
        let (off, len) = match (l.tile_offsets.get(idx), l.tile_counts.get(idx)) {
            (Some(o), Some(c)) if tx < across => (*o, *c),
            _ => return Err(SlideError::Broken(format!("tile {tx},{ty} of level {level} does not exist"))),
        };
        if len == 0 {
            // A tile no frame covers (DICOM TILED_SPARSE): white, as OpenSlide draws it.
            let n = l.tile_width as usize * l.tile_height as usize * 3;
            return Ok(Rgb { width: l.tile_width, height: l.tile_height, pixels: vec![255u8; n] });
        }
        // A compressed tile is at most an uncompressed one plus slack; a larger count is damage.
        let most = u64::from(l.tile_width) * u64::from(l.tile_height) * 4 + (1 << 20);
        if len > most {
            return Err(SlideError::Broken(format!("tile {tx},{ty} of level {level} claims {len} bytes")));
        }
        let file = l.tile_files.get(idx).map_or(0, |f| *f as usize);
        let file = self.files.get(file).ok_or_else(|| SlideError::Broken(format!("tile {tx},{ty}: no file")))?;
        let mut raw = vec![0u8; usize::try_from(len).map_err(|_| SlideError::Broken("tile too large".into()))?];
        file.read_exact_at(&mut raw, off)?;
        decode_tile(l, &raw)
    }

    /// RGB pixels of a `width` x `height` region of `level` whose top-left corner is (x, y) in
    /// level-0 pixels, as OpenSlide's read_region. Pixels outside the level are white.
    /// SHA-256 of the slide as opened (the tile-embedding cache's key): of its file, or for a
    /// DICOM slide of its level files in pyramid order. Read by position, as the tiles are, so
    /// the files' cursors are never shared.
    pub fn sha256(&self) -> Result<String, SlideError> {
        struct ReadAt<'a>(&'a File, u64);
        impl std::io::Read for ReadAt<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read_at(buf, self.1)?;
                self.1 += n as u64;
                Ok(n)
            }
        }
        let hash = |f: &File| {
            crate::sha256_stream(ReadAt(f, 0), || ())
                .map(|(sha, _)| sha)
                .map_err(|e| SlideError::Broken(format!("reading the slide: {e}")))
        };
        match self.files.as_slice() {
            [one] => hash(one),
            many => {
                use sha2::Digest;
                let mut all = sha2::Sha256::new();
                for f in many {
                    all.update(hash(f)?.as_bytes());
                }
                Ok(hex::encode(all.finalize()))
            }
        }
    }

    pub fn read_region(&self, level: usize, x: i64, y: i64, width: u32, height: u32) -> Result<Rgb, SlideError> {
        let px = u64::from(width) * u64::from(height);
        if px > MAX_REGION_PIXELS {
            return Err(SlideError::OverLimit { what: "region pixels", value: px, limit: MAX_REGION_PIXELS });
        }
        #[cfg(feature = "openslide")]
        if let Some(o) = &self.openslide {
            if level >= self.header.levels.len() {
                return Err(SlideError::Broken(format!("no level {level}")));
            }
            return Ok(Rgb { width, height, pixels: o.read_region(level, x, y, width, height)? });
        }
        let l = self.levels.get(level).ok_or_else(|| SlideError::Broken(format!("no level {level}")))?;
        let ds = self.header.levels[level].downsample;
        let (lx, ly) = ((x as f64 / ds).floor() as i64, (y as f64 / ds).floor() as i64);
        let (tw, th) = (i64::from(l.tile_width), i64::from(l.tile_height));
        let (lw, lh) = (l.width as i64, l.height as i64);
        // A region that is exactly one whole tile inside the level (the benchmark's case, and
        // the model's when its tiles fall on the scanner's): the decoded tile is the region, with
        // no second buffer, no white fill and no copy.
        if lx >= 0
            && ly >= 0
            && lx % tw == 0
            && ly % th == 0
            && (i64::from(width), i64::from(height)) == (tw, th)
            && lx + tw <= lw
            && ly + th <= lh
        {
            return self.read_tile(level, (lx / tw) as u32, (ly / th) as u32);
        }
        let mut out = Rgb { width, height, pixels: vec![255u8; px as usize * 3] };
        let (x0, y0) = (lx.max(0), ly.max(0));
        let (x1, y1) = ((lx + i64::from(width)).min(lw), (ly + i64::from(height)).min(lh));
        if x0 >= x1 || y0 >= y1 {
            return Ok(out);
        }
        for ty in (y0 / th)..=((y1 - 1) / th) {
            for tx in (x0 / tw)..=((x1 - 1) / tw) {
                let tile = self.read_tile(level, tx as u32, ty as u32)?;
                // Copy the overlap of this tile and the region.
                let (sx0, sy0) = ((tx * tw).max(x0), (ty * th).max(y0));
                let (sx1, sy1) = (((tx + 1) * tw).min(x1), ((ty + 1) * th).min(y1));
                for yy in sy0..sy1 {
                    let src = (((yy - ty * th) * tw + (sx0 - tx * tw)) * 3) as usize;
                    let dst = (((yy - ly) * i64::from(width) + (sx0 - lx)) * 3) as usize;
                    let n = ((sx1 - sx0) * 3) as usize;
                    out.pixels[dst..dst + n].copy_from_slice(&tile.pixels[src..src + n]);
                }
            }
        }
        Ok(out)
    }
}

impl SlideReader {
    /// Read square regions (level-0 `(x, y)`, `size` pixels, at `level`) on `threads` threads and
    /// hand them to `sink` in input order. At most `threads x 4` regions are decoded ahead of the
    /// sink, so memory stays bounded whatever the slide's size.
    ///
    /// One thread reads on the caller's thread. More start once per call and stay busy while the
    /// sink works: no barrier between batches, and each keeps its JPEG decompressor for the
    /// whole call (creating one costs more than a small tile).
    pub fn read_regions_parallel(
        &self,
        level: usize,
        origins: &[(i64, i64)],
        size: u32,
        threads: usize,
        mut sink: impl FnMut(usize, Rgb) -> Result<(), SlideError>,
    ) -> Result<(), SlideError> {
        use std::sync::{Mutex, mpsc};
        let threads = threads.max(1);
        if threads == 1 || origins.len() < 2 {
            for (i, (x, y)) in origins.iter().enumerate() {
                sink(i, self.read_region(level, *x, *y, size, size)?)?;
            }
            return Ok(());
        }
        let ahead = threads * 4;
        let stopped = || SlideError::Broken("tile reader threads stopped".into());
        let (job_tx, job_rx) = mpsc::sync_channel::<usize>(ahead);
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::channel::<(usize, Result<Rgb, SlideError>)>();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (job_rx, done_tx) = (&job_rx, done_tx.clone());
                s.spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next index.
                        let next = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Some((i, &(x, y))) = next.ok().and_then(|i| origins.get(i).map(|o| (i, o))) else {
                            return;
                        };
                        if done_tx.send((i, self.read_region(level, x, y, size, size))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            // Regions decoded out of order wait here until their turn (at most `ahead`).
            let mut waiting: std::collections::BTreeMap<usize, Result<Rgb, SlideError>> = Default::default();
            let (mut sent, mut next) = (0usize, 0usize);
            let result = loop {
                while sent < origins.len() && sent < next + ahead {
                    if job_tx.send(sent).is_err() {
                        break;
                    }
                    sent += 1;
                }
                if let Some(r) = waiting.remove(&next) {
                    let delivered = r.and_then(|rgb| sink(next, rgb));
                    if delivered.is_err() {
                        break delivered;
                    }
                    next += 1;
                    if next == origins.len() {
                        break Ok(());
                    }
                    continue;
                }
                match done_rx.recv() {
                    Ok((i, r)) => {
                        waiting.insert(i, r);
                    }
                    Err(_) => break Err(stopped()),
                }
            };
            // The workers finish what they hold and stop.
            drop(job_tx);
            result
        })
    }
}

fn decode_tile(l: &LevelData, raw: &[u8]) -> Result<Rgb, SlideError> {
    let (w, h) = (l.tile_width, l.tile_height);
    let n = w as usize * h as usize;
    let bad = |m: String| SlideError::Broken(m);
    let rgb = match l.compression {
        7 => {
            // Abbreviated tile stream: splice the level's tables (without their EOI) before the
            // tile's data (without its SOI).
            let stream = match &l.jpeg_tables {
                Some(t) if t.len() >= 4 && raw.len() >= 2 => {
                    let mut s = t[..t.len() - 2].to_vec();
                    s.extend_from_slice(&raw[2..]);
                    s
                }
                _ => raw.to_vec(),
            };
            let colour = if l.jpeg_colour_from_stream { None } else { Some(l.photometric == 2) };
            decode_jpeg_tile(stream, w, h, colour).map_err(|e| bad(format!("JPEG tile: {e}")))?
        }
        1 => raw.to_vec(),
        5 => {
            let mut d = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
            d.decode(raw).map_err(|e| bad(format!("LZW tile: {e}")))?
        }
        8 | 32946 => {
            use std::io::Read;
            let mut v = Vec::with_capacity(n * 3);
            flate2::read::ZlibDecoder::new(raw)
                .take((n * 4) as u64)
                .read_to_end(&mut v)
                .map_err(|e| bad(format!("Deflate tile: {e}")))?;
            v
        }
        33003 | 33005 | 34712 | super::tiff::COMPRESSION_HTJ2K_YCBCR | super::tiff::COMPRESSION_HTJ2K_RGB => {
            let ycbcr = matches!(l.compression, 33003 | super::tiff::COMPRESSION_HTJ2K_YCBCR);
            decode_j2k_tile(raw, w, h, ycbcr)?
        }
        super::tiff::COMPRESSION_JPEG_LS => decode_jpeg_ls_tile(raw, w, h)?,
        c => return Err(SlideError::UnsupportedCompression(c)),
    };
    let spp = usize::from(l.samples_per_pixel.max(1));
    if l.planar != 1 || !(spp == 3 || spp == 4 || l.compression == 7) {
        return Err(bad(format!("{spp} samples per pixel, planar configuration {} not supported", l.planar)));
    }
    // A tile shorter than its declared size is an error, not a short last pixel to index past
    // (an uncompressed tile of 100 bytes at 3 samples per pixel once stopped every prediction).
    let need = if l.compression == 7 { n * 3 } else { n * spp };
    if rgb.len() < need {
        return Err(bad(format!("tile decoded to {} bytes, {need} expected", rgb.len())));
    }
    let mut rgb = if l.compression == 7 {
        rgb
    } else {
        rgb.chunks_exact(spp).take(n).flat_map(|p| p.iter().take(3).copied()).collect()
    };
    if l.predictor == 2 && l.compression != 7 {
        // Horizontal differencing, per channel, per row.
        for row in rgb.chunks_mut(w as usize * 3) {
            for i in 3..row.len() {
                row[i] = row[i].wrapping_add(row[i - 3]);
            }
        }
    }
    if rgb.len() < n * 3 {
        return Err(bad(format!("tile decoded to {} bytes, {} expected", rgb.len(), n * 3)));
    }
    rgb.truncate(n * 3);
    Ok(Rgb { width: w, height: h, pixels: rgb })
}

/// Decode one JPEG tile with libjpeg-turbo (TurboJPEG), the library OpenSlide decodes with and the
/// study's tiles were made with: the same integer inverse DCT, the same "fancy" chroma upsampling
/// and the same YCbCr conversion, so tiles come out identical to OpenSlide's, not merely close
/// (pure-Rust decoders differ by 1-4 levels; docs/IMAGING.md). TIFF says the colour space by its
/// Photometric tag where libjpeg guesses it from markers and component ids, so the stream is told
/// first (see [`set_jpeg_colour_space`]); `rgb` None leaves it to the stream (DICOM frames, as
/// OpenSlide does). The header's size must be the tile's before the output is allocated.
fn decode_jpeg_tile(mut stream: Vec<u8>, w: u32, h: u32, rgb: Option<bool>) -> Result<Vec<u8>, String> {
    use std::cell::RefCell;
    use turbojpeg::{Decompressor, Image, PixelFormat};
    thread_local! {
        // One decompressor per thread, reused: tjInitDecompress costs more than a small tile.
        static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
    }
    if let Some(rgb) = rgb {
        set_jpeg_colour_space(&mut stream, rgb);
    }
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let d = match &mut *slot {
            Some(d) => d,
            empty => empty.insert(Decompressor::new().map_err(|e| e.to_string())?),
        };
        // Progressive streams can hold a scan per coefficient bit; a tile needs nowhere near 64.
        d.set_scan_limit(64).map_err(|e| e.to_string())?;
        let header = d.read_header(&stream).map_err(|e| e.to_string())?;
        if (header.width, header.height) != (w as usize, h as usize) {
            return Err(format!("{}x{} in a {w}x{h} tile", header.width, header.height));
        }
        let (wu, hu) = (w as usize, h as usize);
        let mut px = vec![0u8; wu * hu * 3];
        let image = Image { pixels: px.as_mut_slice(), width: wu, pitch: wu * 3, height: hu, format: PixelFormat::RGB };
        d.decompress(&stream, image).map_err(|e| e.to_string())?;
        Ok(px)
    })
}

/// Tell libjpeg a three-component stream's colour space the way the TIFF's Photometric does
/// (OpenSlide sets `jpeg_color_space` from it): component ids 'R','G','B' for RGB, 1,2,3 for
/// YCbCr, in the frame and scan headers; JFIF (APP0) and Adobe (APP14) markers, which would
/// override the ids, become APP15, which libjpeg skips. Only the markers before the first scan
/// are touched; a stream it does not understand is left to the decoder to refuse.
fn set_jpeg_colour_space(s: &mut [u8], rgb: bool) {
    let names: [u8; 3] = if rgb { *b"RGB" } else { [1, 2, 3] };
    let mut ids = [0u8; 3];
    let mut i = 2;
    while i + 4 <= s.len() && s[i] == 0xFF {
        let marker = s[i + 1];
        let len = usize::from(u16::from_be_bytes([s[i + 2], s[i + 3]]));
        if marker == 0xE0 || marker == 0xEE {
            s[i + 1] = 0xEF;
        }
        let Some(seg) = s.get_mut(i + 4..i + 2 + len) else { return };
        match marker {
            0xC0..=0xC3 if seg.len() >= 15 && seg[5] == 3 => {
                for (c, name) in names.iter().enumerate() {
                    ids[c] = seg[6 + 3 * c];
                    seg[6 + 3 * c] = *name;
                }
            }
            0xDA => {
                let n = usize::from(*seg.first().unwrap_or(&0));
                for c in 0..n {
                    if let Some(id) = seg.get_mut(1 + 2 * c)
                        && let Some(k) = ids.iter().position(|x| x == id)
                        && let Some(name) = names.get(k)
                    {
                        *id = *name;
                    }
                }
                return;
            }
            _ => {}
        }
        i += 2 + len;
    }
}

/// YCbCr to RGB exactly as libjpeg's jdcolor.c does it (16-bit fixed point, same rounding).
fn ycc_to_rgb_libjpeg(px: &mut [u8]) {
    const SCALEBITS: i32 = 16;
    const ONE_HALF: i32 = 1 << (SCALEBITS - 1);
    const fn fix(x: f64) -> i32 {
        (x * (1 << SCALEBITS) as f64 + 0.5) as i32
    }
    for p in px.chunks_exact_mut(3) {
        let (y, cb, cr) = (i32::from(p[0]), i32::from(p[1]) - 128, i32::from(p[2]) - 128);
        let r = y + ((fix(1.40200) * cr + ONE_HALF) >> SCALEBITS);
        let g = y + ((-fix(0.34414) * cb + ONE_HALF - fix(0.71414) * cr) >> SCALEBITS);
        let b = y + ((fix(1.77200) * cb + ONE_HALF) >> SCALEBITS);
        p[0] = r.clamp(0, 255) as u8;
        p[1] = g.clamp(0, 255) as u8;
        p[2] = b.clamp(0, 255) as u8;
    }
}

/// What a JPEG-LS stream's frame header (SOF55) and first scan header (SOS) say: width, height,
/// bits per sample, components, and the components in the first scan (1: one scan per
/// component, "interleave mode none"). Read here, bounds-checked, so that the tile's size is
/// known before CharLS allocates for it. `None` for anything that is not such a stream.
fn jpeg_ls_frame(s: &[u8]) -> Option<(u32, u32, u8, u8, u8)> {
    if s.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let be16 = |at: usize| Some(u16::from_be_bytes([*s.get(at)?, *s.get(at + 1)?]));
    let mut at = 2;
    let mut frame = None;
    loop {
        if *s.get(at)? != 0xFF {
            return None;
        }
        let marker = *s.get(at + 1)?;
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        let len = usize::from(be16(at + 2)?);
        match marker {
            0xF7 => {
                let (bits, h, w, n) = (*s.get(at + 4)?, be16(at + 5)?, be16(at + 7)?, *s.get(at + 9)?);
                frame = Some((u32::from(w), u32::from(h), bits, n));
            }
            0xDA => {
                let (w, h, bits, n) = frame?;
                return Some((w, h, bits, n, *s.get(at + 4)?));
            }
            _ => {}
        }
        at += 2 + len;
    }
}

/// JPEG-LS frames of a DICOM slide (8-bit RGB): CharLS, the reference implementation and the
/// codec DCMTK's `dcmdjpls` uses. The frame header must match the level's tile before anything
/// is decoded (a frame that claims a larger image is refused, not allocated).
fn decode_jpeg_ls_tile(raw: &[u8], w: u32, h: u32) -> Result<Vec<u8>, SlideError> {
    let bad = |m: String| SlideError::Broken(format!("JPEG-LS tile: {m}"));
    let Some((fw, fh, bits, components, first_scan)) = jpeg_ls_frame(raw) else {
        return Err(bad("no JPEG-LS frame and scan header".into()));
    };
    if (fw, fh, bits, components) != (w, h, 8, 3) {
        return Err(bad(format!(
            "{fw}x{fh}, {components} component(s) of {bits} bits; the level's tiles are {w}x{h} RGB of 8 bits"
        )));
    }
    let px = charls::CharLS::default().decode(raw).map_err(|e| bad(e.to_string()))?;
    let n = w as usize * h as usize;
    let planes = px.get(..n * 3).ok_or_else(|| bad(format!("decoded {} bytes, {} expected", px.len(), n * 3)))?;
    if first_scan == 1 {
        // One scan per component: CharLS gives the planes one after another.
        let (r, rest) = planes.split_at(n);
        let (g, b) = rest.split_at(n);
        return Ok(r.iter().zip(g).zip(b).flat_map(|((r, g), b)| [*r, *g, *b]).collect());
    }
    Ok(px)
}

/// JPEG 2000 tiles (Aperio 33003 YCbCr / 33005 RGB, and 34712): the pure-Rust openjp2 decoder
/// CT uses (see [`crate::dicom::j2k`]).
fn decode_j2k_tile(raw: &[u8], w: u32, h: u32, ycbcr: bool) -> Result<Vec<u8>, SlideError> {
    let mut px = crate::dicom::j2k::decode_j2k_8bit(raw, w, h, 3, 8)
        .map_err(|m| SlideError::Broken(format!("JPEG 2000 tile: {m}")))?;
    if ycbcr {
        ycc_to_rgb_libjpeg(&mut px);
    }
    Ok(px)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(compression: u16, samples_per_pixel: u16) -> LevelData {
        LevelData {
            width: 16,
            height: 16,
            tile_width: 16,
            tile_height: 16,
            compression,
            photometric: 2,
            samples_per_pixel,
            planar: 1,
            predictor: 1,
            jpeg_tables: None,
            tile_offsets: vec![0],
            tile_counts: vec![100],
            tile_files: Vec::new(),
            jpeg_colour_from_stream: false,
        }
    }

    /// Regression: an uncompressed tile whose byte count is not a multiple of the samples per
    /// pixel (TileByteCounts 100 at 3 samples) panicked with an index out of bounds.
    #[test]
    fn a_short_or_ragged_uncompressed_tile_is_an_error_not_a_panic() {
        for (spp, len) in [(3u16, 100usize), (4, 101), (3, 0), (4, 16 * 16 * 4 - 1)] {
            let raw = vec![7u8; len];
            let r = decode_tile(&level(1, spp), &raw);
            assert!(
                matches!(r, Err(SlideError::Broken(_))),
                "{spp} samples, {len} bytes: {:?}",
                r.map(|t| t.pixels.len())
            );
        }
        let whole = decode_tile(&level(1, 4), &vec![7u8; 16 * 16 * 4]).unwrap();
        assert_eq!(whole.pixels.len(), 16 * 16 * 3);
    }

    #[test]
    fn a_damaged_compressed_tile_is_an_error_not_a_panic() {
        for compression in [5u16, 7, 8, 32946] {
            for len in [0usize, 1, 2, 3, 100, 767] {
                let raw: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
                let _ = decode_tile(&level(compression, 3), &raw);
            }
        }
    }
}
