//! Linux framebuffer (`/dev/fbN`). Geometry and pixel format come from the
//! FBIOGET_VSCREENINFO / FBIOGET_FSCREENINFO ioctls; for a regular file (a file-backed buffer
//! in tests, or a board whose driver lacks them) they come from configuration instead.

use super::{Display, DisplayError, Frame};
use embedded_graphics::pixelcolor::raw::{RawData, RawU16};
use embedded_graphics::pixelcolor::{Rgb565, Rgb888, RgbColor};
use embedded_graphics::prelude::Size;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How pixels are laid out in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 16 bits, little endian, 5-6-5.
    Rgb565,
    /// 32 bits, bytes B, G, R, X (XRGB8888 little endian: most HDMI framebuffers).
    Xrgb8888,
    /// 32 bits, bytes R, G, B, X.
    Xbgr8888,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb565 => 2,
            _ => 4,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rgb565" => Some(PixelFormat::Rgb565),
            "xrgb8888" => Some(PixelFormat::Xrgb8888),
            "xbgr8888" => Some(PixelFormat::Xbgr8888),
            _ => None,
        }
    }

    fn encode(self, c: Rgb888, out: &mut [u8]) {
        match self {
            PixelFormat::Rgb565 => {
                // embedded-graphics' rounding, so a panel shows exactly what an RGB565 render draws.
                let v = RawU16::from(Rgb565::from(c)).into_inner();
                out[..2].copy_from_slice(&v.to_le_bytes());
            }
            PixelFormat::Xrgb8888 => out[..4].copy_from_slice(&[c.b(), c.g(), c.r(), 0xFF]),
            PixelFormat::Xbgr8888 => out[..4].copy_from_slice(&[c.r(), c.g(), c.b(), 0xFF]),
        }
    }
}

/// Geometry of a framebuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub width: u32,
    pub height: u32,
    /// Bytes per row (may exceed width x bytes per pixel).
    pub stride: usize,
    pub format: PixelFormat,
}

pub struct FramebufferDisplay {
    path: PathBuf,
    file: File,
    geometry: Geometry,
    buffer: Vec<u8>,
}

// Layouts of the kernel's struct fb_var_screeninfo / fb_fix_screeninfo (linux/fb.h).
#[repr(C)]
#[derive(Default)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

#[repr(C)]
#[derive(Default)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

#[repr(C)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

/// Ask the kernel for the framebuffer's geometry; `None` if the file is not a framebuffer.
fn query_geometry(file: &File) -> Option<Geometry> {
    let fd = file.as_raw_fd();
    let mut var = FbVarScreeninfo::default();
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of the call, and `var`
    // is a properly sized, writable repr(C) struct matching the kernel's fb_var_screeninfo.
    let r = unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var as *mut FbVarScreeninfo) };
    if r != 0 {
        return None;
    }
    // SAFETY: all-zero bytes are a valid value for this plain-integer repr(C) struct.
    let mut fix: FbFixScreeninfo = unsafe { std::mem::zeroed() };
    // SAFETY: as above, for fb_fix_screeninfo.
    let r = unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix as *mut FbFixScreeninfo) };
    if r != 0 {
        return None;
    }
    let format = match (var.bits_per_pixel, var.red.offset) {
        (16, _) => PixelFormat::Rgb565,
        (32, 16) => PixelFormat::Xrgb8888,
        (32, 0) => PixelFormat::Xbgr8888,
        _ => return None,
    };
    Some(Geometry { width: var.xres, height: var.yres, stride: fix.line_length as usize, format })
}

impl FramebufferDisplay {
    /// Open a framebuffer device, or a regular file with `fallback` geometry.
    pub fn open(path: &Path, fallback: Option<Geometry>) -> Result<Self, DisplayError> {
        let device = format!("framebuffer:{}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| DisplayError::Io { device: device.clone(), source })?;
        let geometry = query_geometry(&file).or(fallback).ok_or_else(|| DisplayError::Device {
            device: device.clone(),
            message: "not a framebuffer device and no geometry configured (display.size, display.pixel_format)".into(),
        })?;
        let needed = geometry.stride * geometry.height as usize;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if is_file && (len as usize) < needed {
            file.set_len(needed as u64).map_err(|source| DisplayError::Io { device: device.clone(), source })?;
        }
        Ok(FramebufferDisplay { path: path.to_path_buf(), file, geometry, buffer: vec![0; needed] })
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
}

impl Display for FramebufferDisplay {
    fn size(&self) -> Size {
        Size::new(self.geometry.width, self.geometry.height)
    }

    fn show(&mut self, frame: &Frame<Rgb888>) -> Result<(), DisplayError> {
        let g = self.geometry;
        let bpp = g.format.bytes_per_pixel();
        // The frame is drawn top-left; a larger panel keeps black margins.
        for y in 0..g.height {
            let row = &mut self.buffer[y as usize * g.stride..][..g.width as usize * bpp];
            for x in 0..g.width {
                let c = frame.pixel(x, y).unwrap_or(Rgb888::BLACK);
                g.format.encode(c, &mut row[x as usize * bpp..]);
            }
        }
        self.file.write_all_at(&self.buffer, 0).map_err(|source| DisplayError::Io { device: self.describe(), source })
    }

    fn describe(&self) -> String {
        format!("framebuffer:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_graphics::prelude::*;
    use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};

    #[test]
    fn file_backed_framebuffer_receives_rgb565_pixels_with_stride() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fb0");
        std::fs::write(&path, b"").unwrap();
        let g = Geometry { width: 40, height: 30, stride: 96, format: PixelFormat::Rgb565 };
        let mut fb = FramebufferDisplay::open(&path, Some(g)).unwrap();
        let mut frame = Frame::new(Size::new(40, 30), Rgb888::new(10, 20, 30));
        Rectangle::new(Point::new(5, 5), Size::new(10, 4))
            .into_styled(PrimitiveStyle::with_fill(Rgb888::new(255, 128, 0)))
            .draw(&mut frame)
            .unwrap();
        fb.show(&frame).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 96 * 30);
        let at = |x: usize, y: usize| {
            Rgb565::from(RawU16::new(u16::from_le_bytes([bytes[y * 96 + x * 2], bytes[y * 96 + x * 2 + 1]])))
        };
        let expect565 = frame.to_rgb565();
        for y in 0..30 {
            for x in 0..40 {
                assert_eq!(at(x, y), expect565.pixel(x as u32, y as u32).unwrap(), "pixel {x},{y}");
            }
        }
        assert_eq!(at(6, 6), Rgb565::from(Rgb888::new(255, 128, 0)));
        // Bytes past the visible row (stride padding) stay untouched.
        assert!(bytes[80..96].iter().all(|b| *b == 0));
    }

    #[test]
    fn regular_file_without_geometry_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fb0");
        std::fs::write(&path, b"").unwrap();
        let err = FramebufferDisplay::open(&path, None).err().unwrap();
        assert!(err.to_string().contains("not a framebuffer device"), "{err}");
    }
}
