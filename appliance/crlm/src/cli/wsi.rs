use super::*;

#[derive(Subcommand)]
pub enum WsiAction {
    /// Levels, downsamples, resolution, scanner and associated images of a slide.
    Info {
        slide: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write the tissue mask (computed on a low-resolution level) as PNG.
    Tissue {
        slide: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// List tissue tiles in level-0 pixels (row-major, deterministic).
    Tiles {
        slide: PathBuf,
        /// Microns per pixel of the tiles.
        #[arg(long, default_value_t = 0.5)]
        mpp: f64,
        /// Tile edge in pixels at that resolution.
        #[arg(long, default_value_t = 224)]
        size: u32,
        /// Least tissue fraction of a kept tile.
        #[arg(long, default_value_t = 0.5)]
        min_tissue: f64,
        #[arg(long)]
        json: bool,
    },
    /// Read and decode regions (default: every native tile of level 0) and report throughput.
    Bench {
        slide: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Region edge in pixels (default: the level's tile size).
        #[arg(long)]
        size: Option<u32>,
        /// A JSON file of [[x, y], ...] level-0 origins (default: the native tile grid).
        #[arg(long)]
        origins: Option<PathBuf>,
    },
    /// The model's tile path without the model: the tissue grid, then every tissue tile read,
    /// decoded, resized when the level does not match and normalised, in batches, as the tile
    /// stream feeds a tile encoder; reports tiles/s (how many cores keep ahead of an encoder).
    Stream {
        slide: PathBuf,
        #[arg(long, default_value_t = 0.5)]
        mpp: f64,
        #[arg(long, default_value_t = 224)]
        size: u32,
        #[arg(long, default_value_t = 0.5)]
        min_tissue: f64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// At most this many tiles (evenly spread); default every tissue tile.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write a region as PNG; x and y are level-0 pixels, as in OpenSlide's read_region.
    Region {
        slide: PathBuf,
        #[arg(long, default_value_t = 0)]
        level: usize,
        #[arg(long)]
        x: i64,
        #[arg(long)]
        y: i64,
        #[arg(long)]
        width: u32,
        #[arg(long)]
        height: u32,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(action: WsiAction, limits: &Limits) -> anyhow::Result<ExitCode> {
    match action {
        WsiAction::Info { slide, json } => {
            // Through the reader, so a DICOM slide is its whole series (the files beside this one).
            let reader = crlm_models::slide::read::SlideReader::open(&slide, limits)
                .with_context(|| format!("reading {}", slide.display()))?;
            let h = &reader.header;
            if json {
                println!("{}", serde_json::to_string_pretty(h)?);
            } else {
                println!("{}: {:?}{}", slide.display(), h.format, if h.big_tiff { " (BigTIFF)" } else { "" });
                println!("  reader: {}", h.format.reader());
                if h.dicom_series.is_some() {
                    println!("  files: {} (the series' levels in this folder)", reader.file_count());
                }
                for (i, l) in h.levels.iter().enumerate() {
                    println!(
                        "  level {i}: {}x{} px, downsample {:.3}, tiles {}x{} ({}), compression {} ({})",
                        l.width,
                        l.height,
                        l.downsample,
                        l.tile_width,
                        l.tile_height,
                        l.tiles,
                        l.compression,
                        crlm_models::slide::tiff::compression_name(l.compression)
                    );
                }
                println!(
                    "  microns per pixel: {}",
                    h.microns_per_pixel.map(|m| format!("{m}")).unwrap_or_else(|| "unknown (configure it)".into())
                );
                println!(
                    "  objective power: {}",
                    h.objective_power.map(|m| format!("{m}x")).unwrap_or_else(|| "unknown".into())
                );
                println!("  scanner: {}", h.scanner.as_deref().unwrap_or("unknown"));
                if let Some(icc) = &reader.icc_profile {
                    println!("  ICC profile: {} bytes (carried; pixels are as stored)", icc.len());
                }
                println!(
                    "  associated images (never decoded): {}",
                    if h.associated.is_empty() { "none".into() } else { h.associated.join(", ") }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        WsiAction::Tissue { slide, out } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, limits)
                .with_context(|| format!("reading {}", slide.display()))?;
            let m = crlm_models::slide::tissue::tissue_mask(&reader)?;
            let grey: Vec<u8> = m.mask.iter().map(|v| v * 255).collect();
            let bytes = crlm_drivers::display::png::encode_8bit(m.width, m.height, true, &grey)?;
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: mask on level {} ({}x{}), {:.1}% tissue, Otsu threshold {} -> {}",
                slide.display(),
                m.level,
                m.width,
                m.height,
                m.tissue_fraction() * 100.0,
                m.otsu_threshold,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        WsiAction::Tiles { slide, mpp, size, min_tissue, json } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, limits)
                .with_context(|| format!("reading {}", slide.display()))?;
            let m = crlm_models::slide::tissue::tissue_mask(&reader)?;
            let tiles = crlm_models::slide::tissue::tile_grid(&reader, &m, mpp, size, min_tissue)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tiles)?);
            } else {
                println!(
                    "{}: {} tiles of {size} px at {mpp} um/px ({} level-0 px each)",
                    slide.display(),
                    tiles.len(),
                    tiles.first().map_or(0, |t| t.size)
                );
                for t in tiles.iter().take(20) {
                    println!("  x {:>7} y {:>7} tissue {:.2}", t.x, t.y, t.tissue);
                }
                if tiles.len() > 20 {
                    println!("  ... ({} more; --json lists all)", tiles.len() - 20);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        WsiAction::Bench { slide, threads, size, origins } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, limits)
                .with_context(|| format!("reading {}", slide.display()))?;
            let l0 = reader.header.levels.first().context("the slide has no level")?;
            let size = size.unwrap_or(l0.tile_width);
            let origins: Vec<(i64, i64)> = match origins {
                Some(p) => {
                    serde_json::from_slice(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)?
                }
                None => (0..l0.height / u64::from(size))
                    .flat_map(|ty| {
                        (0..l0.width / u64::from(size))
                            .map(move |tx| ((tx * u64::from(size)) as i64, (ty * u64::from(size)) as i64))
                    })
                    .collect(),
            };
            let start = std::time::Instant::now();
            let mut checksum = 0u64;
            reader.read_regions_parallel(0, &origins, size, threads, |_, rgb| {
                checksum = checksum.wrapping_add(rgb.pixels.iter().step_by(97).map(|v| u64::from(*v)).sum::<u64>());
                Ok(())
            })?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{} regions of {size} px on {threads} thread(s): {secs:.3} s, {:.0} regions/s (checksum {checksum})",
                origins.len(),
                origins.len() as f64 / secs
            );
            Ok(ExitCode::SUCCESS)
        }
        WsiAction::Stream { slide, mpp, size, min_tissue, threads, batch, limit } => {
            use crlm_models::package::spec::{MaxTiles, SlideInputSpec, TileSampling};
            let reader = crlm_models::slide::read::SlideReader::open(&slide, limits)
                .with_context(|| format!("reading {}", slide.display()))?;
            let spec = SlideInputSpec {
                tile_px: size,
                microns_per_pixel: mpp,
                min_tissue,
                max_tiles: limit.map_or(MaxTiles::All, MaxTiles::Count),
                sampling: TileSampling::Even,
                tile_batch: None,
                tile_mean: None,
                tile_std: None,
            };
            let start = std::time::Instant::now();
            let plan = crlm_models::slide::sample::sample_tiles(
                std::sync::Arc::new(reader),
                &spec,
                spec.max_tiles.per_slide(1),
            )?;
            let plan_s = start.elapsed().as_secs_f64();
            let start = std::time::Instant::now();
            let mut checksum = 0f64;
            let n = plan.tiles.len();
            for first in (0..n).step_by(batch.max(1)) {
                let px = plan.read(first..(first + batch.max(1)).min(n), threads)?;
                let v = crlm_models::tile_stream::normalise(
                    &px,
                    size as usize,
                    [0.485, 0.456, 0.406],
                    [0.229, 0.224, 0.225],
                );
                checksum += v.iter().step_by(4099).map(|x| f64::from(*x)).sum::<f64>();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}: {n} of {} tissue tiles of {size} px at {mpp} um/px (level {}, {} px read per tile); grid {plan_s:.2} s; \
                 read+decode+normalise on {threads} thread(s): {secs:.2} s, {:.0} tiles/s (checksum {checksum:.3})",
                slide.display(),
                plan.tissue_tiles,
                plan.level,
                plan.read_px,
                n as f64 / secs.max(1e-9)
            );
            Ok(ExitCode::SUCCESS)
        }
        WsiAction::Region { slide, level, x, y, width, height, out } => {
            let reader = crlm_models::slide::read::SlideReader::open(&slide, limits)
                .with_context(|| format!("reading {}", slide.display()))?;
            let region = reader.read_region(level, x, y, width, height)?;
            let bytes = crlm_drivers::display::png::encode_8bit(region.width, region.height, false, &region.pixels)?;
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{}: level {level} region at ({x}, {y}) level-0, {width}x{height} -> {}",
                slide.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
