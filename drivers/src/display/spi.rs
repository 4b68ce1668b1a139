//! SPI panels (ILI9486-class 480x320 TFTs, as on most 3.5" lab-box displays) through
//! linux-embedded-hal (spidev + GPIO character device) and mipidsi. Built with feature `spi`.
//! Not testable without the panel: the HIL harness drives it on a real device.

use super::{Display, DisplayError, Frame};
use embedded_graphics::pixelcolor::{Rgb565, Rgb888};
use embedded_graphics::prelude::*;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
use linux_embedded_hal::{CdevPin, Delay, SpidevDevice};
use mipidsi::interface::SpiInterface;
use mipidsi::models::ILI9486Rgb565;
use mipidsi::options::{Orientation, Rotation};
use std::path::{Path, PathBuf};

/// GPIO lines of the panel's data/command and reset pins.
#[derive(Debug, Clone)]
pub struct SpiPins {
    pub gpio_chip: PathBuf,
    pub dc_line: u32,
    pub reset_line: u32,
}

type Panel = mipidsi::Display<SpiInterface<'static, SpidevDevice, CdevPin>, ILI9486Rgb565, CdevPin>;

pub struct SpiDisplay {
    path: PathBuf,
    size: Size,
    panel: Panel,
}

impl SpiDisplay {
    pub fn open(path: &Path, size: Size, pins: &SpiPins) -> Result<Self, DisplayError> {
        let device = format!("spi:{}", path.display());
        let err = |m: String| DisplayError::Device { device: device.clone(), message: m };
        let mut spi = SpidevDevice::open(path).map_err(|e| err(format!("open: {e:?}")))?;
        let opts =
            SpidevOptions::new().bits_per_word(8).max_speed_hz(32_000_000).mode(SpiModeFlags::SPI_MODE_0).build();
        spi.0.configure(&opts).map_err(|e| err(format!("configure: {e}")))?;
        let mut chip = Chip::new(&pins.gpio_chip).map_err(|e| err(format!("gpio chip: {e}")))?;
        let mut output = |line: u32, label: &str| -> Result<CdevPin, DisplayError> {
            let handle = chip
                .get_line(line)
                .and_then(|l| l.request(LineRequestFlags::OUTPUT, 0, label))
                .map_err(|e| err(format!("gpio line {line}: {e}")))?;
            CdevPin::new(handle).map_err(|e| err(format!("gpio line {line}: {e}")))
        };
        let dc = output(pins.dc_line, "crlm-panel-dc")?;
        let rst = output(pins.reset_line, "crlm-panel-reset")?;
        // The interface borrows its transfer buffer for the panel's lifetime: one per process.
        let buffer: &'static mut [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
        let di = SpiInterface::new(spi, dc, buffer);
        // The controller is 320x480 portrait; landscape panels rotate by 90 degrees.
        let landscape = size.width > size.height;
        let orientation = if landscape { Orientation::new().rotate(Rotation::Deg90) } else { Orientation::new() };
        let panel = mipidsi::Builder::new(ILI9486Rgb565, di)
            .display_size(320, 480)
            .orientation(orientation)
            .reset_pin(rst)
            .init(&mut Delay)
            .map_err(|e| err(format!("init: {e:?}")))?;
        Ok(SpiDisplay { path: path.to_path_buf(), size, panel })
    }
}

impl Display for SpiDisplay {
    fn size(&self) -> Size {
        self.size
    }

    fn show(&mut self, frame: &Frame<Rgb888>) -> Result<(), DisplayError> {
        let (w, h) = (self.size.width, self.size.height);
        let pixels = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| Rgb565::from(frame.pixel(x, y).unwrap_or(Rgb888::BLACK)));
        let (ex, ey) = (u16::try_from(w - 1).unwrap_or(u16::MAX), u16::try_from(h - 1).unwrap_or(u16::MAX));
        self.panel
            .set_pixels(0, 0, ex, ey, pixels)
            .map_err(|e| DisplayError::Device { device: self.describe(), message: format!("write: {e:?}") })
    }

    fn describe(&self) -> String {
        format!("spi:{}", self.path.display())
    }
}
