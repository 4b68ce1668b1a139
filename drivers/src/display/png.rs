//! The development display: each frame rewrites a PNG file atomically (temp file + rename), so a
//! viewer never sees half a frame.

use super::{Display, DisplayError, Frame};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::Size;
use std::path::PathBuf;

pub struct PngDisplay {
    path: PathBuf,
    size: Size,
}

impl PngDisplay {
    pub fn new(path: PathBuf, size: Size) -> Self {
        PngDisplay { path, size }
    }
}

/// Encode a frame as an 8-bit RGB PNG.
pub fn encode_png(frame: &Frame<Rgb888>) -> Result<Vec<u8>, DisplayError> {
    use embedded_graphics::prelude::OriginDimensions;
    let size = frame.size();
    encode_8bit(size.width, size.height, false, &frame.to_rgb_bytes())
}

/// Encode packed 8-bit pixels as PNG: RGB (3 bytes a pixel), or grey (1 byte) when `grey`.
pub fn encode_8bit(width: u32, height: u32, grey: bool, pixels: &[u8]) -> Result<Vec<u8>, DisplayError> {
    let mut out = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut out, width, height);
        enc.set_color(if grey { ::png::ColorType::Grayscale } else { ::png::ColorType::Rgb });
        enc.set_depth(::png::BitDepth::Eight);
        enc.set_compression(::png::Compression::High);
        let mut w = enc.write_header().map_err(|e| DisplayError::Png(e.to_string()))?;
        w.write_image_data(pixels).map_err(|e| DisplayError::Png(e.to_string()))?;
    }
    Ok(out)
}

/// Decode an 8-bit RGB or RGBA PNG into (width, height, RGB bytes): golden-image tests.
pub fn decode_png(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), DisplayError> {
    let dec = ::png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().map_err(|e| DisplayError::Png(e.to_string()))?;
    let mut buf = vec![0; r.output_buffer_size().unwrap_or(0)];
    let info = r.next_frame(&mut buf).map_err(|e| DisplayError::Png(e.to_string()))?;
    buf.truncate(info.buffer_size());
    let rgb = match info.color_type {
        ::png::ColorType::Rgb => buf,
        ::png::ColorType::Rgba => buf.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        other => return Err(DisplayError::Png(format!("unexpected PNG colour type {other:?}"))),
    };
    Ok((info.width, info.height, rgb))
}

impl Display for PngDisplay {
    fn size(&self) -> Size {
        self.size
    }

    fn show(&mut self, frame: &Frame<Rgb888>) -> Result<(), DisplayError> {
        let io = |source| DisplayError::Io { device: self.describe(), source };
        let bytes = encode_png(frame)?;
        let dir =
            self.path.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from).unwrap_or_else(|| ".".into());
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = dir.join(format!(".{}.tmp", self.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("png:{}", self.path.display())
    }
}
