//! Slide pixels from pyramidal TIFFs written by the project's own writer, checked against the
//! pixel function they were written from.

use crlm_models::limits::Limits;
use crlm_models::slide::read::SlideReader;
use crlm_models::slide::writer::he_like_pixel;
use crlm_models::slide::{SlideSpec, write_pyramidal_tiff};

fn slide(uncompressed: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.tif");
    let spec = SlideSpec { uncompressed, label_text: None, ..SlideSpec::small(700, 520) };
    write_pyramidal_tiff(&p, &spec).unwrap();
    (dir, p)
}

#[test]
fn uncompressed_regions_are_exact_across_tile_edges_and_levels() {
    let (_d, p) = slide(true);
    let r = SlideReader::open(&p, &Limits::default()).unwrap();
    // Straddles four 256-px tiles.
    let reg = r.read_region(0, 230, 240, 60, 50).unwrap();
    for y in 0..50u32 {
        for x in 0..60u32 {
            let i = ((y * 60 + x) * 3) as usize;
            assert_eq!(&reg.pixels[i..i + 3], &he_like_pixel(230 + x, 240 + y), "pixel {x},{y}");
        }
    }
    // Level 1 is every second level-0 pixel; (x, y) are level-0 coordinates, as in OpenSlide.
    let reg = r.read_region(1, 400, 100, 30, 20).unwrap();
    for y in 0..20u32 {
        for x in 0..30u32 {
            let i = ((y * 30 + x) * 3) as usize;
            assert_eq!(&reg.pixels[i..i + 3], &he_like_pixel((200 + x) * 2, (50 + y) * 2), "level-1 pixel {x},{y}");
        }
    }
    // Beyond the slide: white.
    let reg = r.read_region(0, 690, 510, 20, 20).unwrap();
    assert_eq!(&reg.pixels[(19 * 20 + 19) * 3..], &[255, 255, 255]);
}

#[test]
fn jpeg_regions_are_close_to_the_source() {
    let (_d, p) = slide(false);
    let r = SlideReader::open(&p, &Limits::default()).unwrap();
    let reg = r.read_region(0, 100, 100, 200, 150).unwrap();
    let mut total = 0u64;
    for y in 0..150u32 {
        for x in 0..200u32 {
            let i = ((y * 200 + x) * 3) as usize;
            let src = he_like_pixel(100 + x, 100 + y);
            for (got, want) in reg.pixels[i..i + 3].iter().zip(src) {
                total += u64::from(got.abs_diff(want));
            }
        }
    }
    let mean = total as f64 / (200.0 * 150.0 * 3.0);
    assert!(mean < 4.0, "mean abs error {mean}");
}

#[test]
fn huge_regions_are_refused_before_allocation() {
    let (_d, p) = slide(true);
    let r = SlideReader::open(&p, &Limits::default()).unwrap();
    let err = r.read_region(0, 0, 0, 100_000, 100_000).unwrap_err();
    assert!(err.to_string().contains("above the limit"), "{err}");
}

#[test]
fn tissue_mask_agrees_with_the_known_tissue_and_tiles_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.svs");
    write_pyramidal_tiff(&p, &SlideSpec { label_text: None, ..SlideSpec::small(1600, 1200) }).unwrap();
    let r = SlideReader::open(&p, &Limits::default()).unwrap();
    let m = crlm_models::slide::tissue::tissue_mask(&r).unwrap();
    // Ground truth: the writer's pixel function is glass exactly where it returns the glass colour.
    let glass = he_like_pixel(0, 0);
    assert_eq!(glass, [242, 240, 244]);
    let mut agree = 0usize;
    for y in 0..m.height {
        for x in 0..m.width {
            let (x0, y0) = ((f64::from(x) * m.downsample) as u32, (f64::from(y) * m.downsample) as u32);
            let truth = he_like_pixel(x0, y0) != glass;
            agree += usize::from(truth == (m.mask[(y * m.width + x) as usize] == 1));
        }
    }
    let rate = agree as f64 / (m.width * m.height) as f64;
    assert!(rate > 0.95, "mask agrees with the truth on {:.1}% of pixels", rate * 100.0);
    let tiles = crlm_models::slide::tissue::tile_grid(&r, &m, 0.5, 128, 0.5).unwrap();
    assert!(!tiles.is_empty());
    assert!(tiles.iter().all(|t| t.tissue >= 0.5 && t.size == 128));
    let again = crlm_models::slide::tissue::tile_grid(&r, &m, 0.5, 128, 0.5).unwrap();
    assert_eq!(tiles, again);
    // Row-major order.
    assert!(tiles.windows(2).all(|w| (w[0].y, w[0].x) < (w[1].y, w[1].x)));
    // At 1.0 um/px the tiles cover twice the level-0 pixels.
    assert_eq!(crlm_models::slide::tissue::tile_grid(&r, &m, 1.0, 128, 0.5).unwrap()[0].size, 256);
}

#[test]
fn parallel_region_reading_delivers_in_order_and_matches_sequential_reads() {
    let (_d, p) = slide(false);
    let r = SlideReader::open(&p, &Limits::default()).unwrap();
    let origins: Vec<(i64, i64)> = (0..23).map(|i| ((i * 29) % 500, (i * 17) % 300)).collect();
    let mut got = Vec::new();
    r.read_regions_parallel(0, &origins, 96, 3, |i, rgb| {
        got.push((i, rgb));
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), origins.len());
    for (n, (i, rgb)) in got.iter().enumerate() {
        assert_eq!(*i, n, "delivered out of order");
        let (x, y) = origins[n];
        assert_eq!(rgb, &r.read_region(0, x, y, 96, 96).unwrap());
    }
}
