//! Rendering frames for a display, and the service task that keeps the panel current.

use super::state::{PanelState, ResultMode};
use super::ui::{self, Rendered, Screen};
use crlm_drivers::display::{Display, DisplayError, Frame};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;

/// Render a screen into a new RGB888 frame.
pub fn render_frame(screen: Screen, st: &PanelState, mode: ResultMode, size: Size) -> (Frame<Rgb888>, Rendered) {
    let mut frame = Frame::new(size, Rgb888::BLACK);
    let rendered = match ui::render(&mut frame, screen, st, mode) {
        Ok(r) => r,
        Err(never) => match never {},
    };
    (frame, rendered)
}

/// Render a screen as PNG bytes.
pub fn render_png(screen: Screen, st: &PanelState, mode: ResultMode, size: Size) -> Result<Vec<u8>, DisplayError> {
    let (frame, _) = render_frame(screen, st, mode, size);
    crlm_drivers::display::png::encode_png(&frame)
}

/// Which screen the panel shows for a state: a recent problem first, then work in progress,
/// then the latest result, else the status.
pub fn choose_screen(st: &PanelState) -> Screen {
    if st.problem.is_some() {
        Screen::Problem
    } else if st.processing.is_some() {
        Screen::Processing
    } else if st.ingest.is_some() {
        Screen::Ingest
    } else if st.result.is_some() {
        Screen::Result
    } else {
        Screen::Status
    }
}

/// Show a frame, logging a failing display once and its recovery once.
pub fn show(panel: &mut dyn Display, frame: &Frame<Rgb888>, failing: &mut bool) {
    match panel.show(frame) {
        Ok(()) => {
            if *failing {
                tracing::info!(stage = "display", device = %panel.describe(), "display works again");
                *failing = false;
            }
        }
        Err(e) => {
            if !*failing {
                tracing::warn!(stage = "display", error_kind = "display", error = %e, "display failed; the pipeline goes on");
                *failing = true;
            }
        }
    }
}

/// Open the configured display. A display that cannot be opened is logged and replaced by
/// none: the pipeline never waits for a panel.
pub fn open_display(cfg: &crlm_config::Config) -> Box<dyn Display> {
    use crlm_drivers::display::{NoDisplay, framebuffer, png::PngDisplay};
    let size = crlm_config::parse_size(&cfg.display.size).unwrap_or(Size::new(480, 320));
    let path = cfg.display_path();
    let opened: Result<Box<dyn Display>, String> = match cfg.display.driver.as_str() {
        "png" => Ok(Box::new(PngDisplay::new(path, size))),
        "framebuffer" => {
            let format =
                framebuffer::PixelFormat::parse(&cfg.display.pixel_format).unwrap_or(framebuffer::PixelFormat::Rgb565);
            let fallback = framebuffer::Geometry {
                width: size.width,
                height: size.height,
                stride: size.width as usize * format.bytes_per_pixel(),
                format,
            };
            framebuffer::FramebufferDisplay::open(&path, Some(fallback))
                .map(|d| Box::new(d) as Box<dyn Display>)
                .map_err(|e| e.to_string())
        }
        "spi" => open_spi(&path, size, cfg),
        _ => Ok(Box::new(NoDisplay(size))),
    };
    match opened {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(stage = "display", error_kind = "display", error = %e, "display unavailable; running without a panel");
            Box::new(NoDisplay(size))
        }
    }
}

#[cfg(feature = "spi")]
fn open_spi(path: &std::path::Path, size: Size, cfg: &crlm_config::Config) -> Result<Box<dyn Display>, String> {
    let pins = crlm_drivers::display::spi::SpiPins {
        gpio_chip: cfg.display.gpio_chip.clone(),
        dc_line: cfg.display.spi_dc_line,
        reset_line: cfg.display.spi_reset_line,
    };
    crlm_drivers::display::spi::SpiDisplay::open(path, size, &pins)
        .map(|d| Box::new(d) as Box<dyn Display>)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "spi"))]
fn open_spi(_: &std::path::Path, _: Size, _: &crlm_config::Config) -> Result<Box<dyn Display>, String> {
    Err("this build has no SPI panel support: build crlm with `--features spi`".into())
}

/// Where the words of each frame go beside a PNG display (`display.txt`): what is on screen, for
/// the HIL harness, end-to-end tests and anyone without the image. Not written on hardware panels.
pub fn texts_path(cfg: &crlm_config::Config) -> Option<std::path::PathBuf> {
    (cfg.display.driver == "png").then(|| cfg.display_path().with_extension("txt"))
}

/// The panel task: shows the newest state, at most `max_fps` frames a second, rendering on a
/// blocking thread so neither ingest nor the async loop ever waits for the panel.
pub async fn run_panel(
    mut panel: Box<dyn Display>,
    mode: ResultMode,
    mut states: tokio::sync::watch::Receiver<PanelState>,
    max_fps: f64,
    texts: Option<std::path::PathBuf>,
) {
    let min_gap = std::time::Duration::from_secs_f64(1.0 / max_fps.max(0.1));
    let mut failing = false;
    tracing::info!(stage = "display", device = %panel.describe(), "panel started");
    loop {
        if states.changed().await.is_err() {
            break; // the service is stopping
        }
        let st = states.borrow_and_update().clone();
        let started = std::time::Instant::now();
        let texts = texts.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let screen = choose_screen(&st);
            let (frame, rendered) = render_frame(screen, &st, mode, panel.size());
            show(panel.as_mut(), &frame, &mut failing);
            if let Some(path) = &texts {
                let words = format!("screen: {screen:?}\n{}\n", rendered.texts.join("\n"));
                if let Err(e) = crlm_core::fsutil::write_atomic(path, words.as_bytes(), 0o644) {
                    tracing::debug!(stage = "display", error = %e, "cannot write the frame's texts");
                }
            }
            (panel, failing)
        })
        .await;
        match joined {
            Ok((d, f)) => {
                panel = d;
                failing = f;
            }
            Err(e) => {
                tracing::error!(stage = "display", error = %e, "panel task failed; panel stopped");
                return;
            }
        }
        tokio::time::sleep(min_gap.saturating_sub(started.elapsed())).await;
    }
}
