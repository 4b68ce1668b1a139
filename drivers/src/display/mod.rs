//! Displays behind one small trait. The UI draws into a [`Frame`] (an embedded-graphics
//! `DrawTarget` in RGB888 or RGB565); a [`Display`] shows finished frames. Implementations:
//! [`png::PngDisplay`] (development: a PNG file rewritten atomically), [`framebuffer`] (Linux
//! `/dev/fbN`, or a file-backed buffer in tests), `spi` (feature `spi`: SPI panels through
//! linux-embedded-hal + mipidsi) and [`NoDisplay`].

pub mod framebuffer;
pub mod png;
#[cfg(feature = "spi")]
pub mod spi;

use embedded_graphics::pixelcolor::{Rgb565, Rgb888, RgbColor};
use embedded_graphics::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display {device}: {source}")]
    Io { device: String, source: std::io::Error },
    #[error("display {device}: {message}")]
    Device { device: String, message: String },
    #[error("could not encode PNG: {0}")]
    Png(String),
}

/// Something that shows whole frames. A failing display never stops the pipeline: callers log
/// the error, report it in the heartbeat and go on.
pub trait Display: Send {
    /// Pixels across and down.
    fn size(&self) -> Size;
    fn show(&mut self, frame: &Frame<Rgb888>) -> Result<(), DisplayError>;
    /// One line for logs and `crlm` output, e.g. `png:/var/lib/crlm/display.png`.
    fn describe(&self) -> String;
}

/// No panel attached (`display.driver = "none"`).
pub struct NoDisplay(pub Size);

impl Display for NoDisplay {
    fn size(&self) -> Size {
        self.0
    }
    fn show(&mut self, _: &Frame<Rgb888>) -> Result<(), DisplayError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// An in-memory frame in any colour type; the UI draws into it.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame<C> {
    width: u32,
    height: u32,
    pixels: Vec<C>,
}

impl<C: PixelColor> Frame<C> {
    pub fn new(size: Size, fill: C) -> Self {
        Frame { width: size.width, height: size.height, pixels: vec![fill; (size.width * size.height) as usize] }
    }
    pub fn pixel(&self, x: u32, y: u32) -> Option<C> {
        (x < self.width && y < self.height).then(|| self.pixels[(y * self.width + x) as usize])
    }
    pub fn pixels(&self) -> &[C] {
        &self.pixels
    }
}

impl<C: PixelColor> OriginDimensions for Frame<C> {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl<C: PixelColor> DrawTarget for Frame<C> {
    type Color = C;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<C>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                self.pixels[(p.y as u32 * self.width + p.x as u32) as usize] = c;
            }
        }
        Ok(())
    }
}

impl Frame<Rgb888> {
    /// Tightly packed RGB bytes.
    pub fn to_rgb_bytes(&self) -> Vec<u8> {
        self.pixels.iter().flat_map(|c| [c.r(), c.g(), c.b()]).collect()
    }

    /// The same frame converted to RGB565 (what 16-bit panels show).
    pub fn to_rgb565(&self) -> Frame<Rgb565> {
        Frame { width: self.width, height: self.height, pixels: self.pixels.iter().map(|c| Rgb565::from(*c)).collect() }
    }
}
