//! The frame header of a JPEG or JPEG-LS stream in DICOM pixel data, checked against the image it
//! must fill before any decoder sees it. jpeg-decoder (dicom-rs's JPEG adapter) sizes its output
//! from the stream's own frame header, not from Rows and Columns: a 210 KB lossless CT whose frame
//! header claimed 65,535 x 65,535 pixels asked for 8.5 GB (found by fuzzing, target
//! `ct_series`; docs/RELIABILITY.md). The header is found by walking the marker segments from the
//! start of image to the first frame header; nothing is decoded.

/// The transfer syntaxes whose frames are JPEG (processes 1-14, lossless included) or JPEG-LS
/// streams.
pub(crate) fn is_jpeg_transfer_syntax(uid: &str) -> bool {
    uid.strip_prefix("1.2.840.10008.1.2.4.")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (50..=70).contains(&n) || n == 80 || n == 81)
}

/// What a frame header (SOFn, or JPEG-LS's SOF55) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub precision: u8,
    pub width: u16,
    pub height: u16,
    pub components: u8,
}

/// Is `marker` a frame header: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC), or SOF55 (F7)?
fn is_frame_marker(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC)) || marker == 0xF7
}

/// The frame header of the stream that starts `data` (at its start-of-image marker).
pub(crate) fn frame_header(data: &[u8]) -> Result<FrameHeader, String> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err("the JPEG stream does not begin with a start-of-image marker".into());
    }
    let mut i = 2;
    loop {
        if data.get(i) != Some(&0xFF) {
            return Err(format!("the JPEG stream has no marker at byte {i} before its frame header"));
        }
        // Fill bytes (0xFF) may precede a marker.
        while data.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let marker = *data.get(i + 1).ok_or("the JPEG stream ends before its frame header")?;
        match marker {
            0x01 | 0xD0..=0xD8 => {
                i += 2;
                continue;
            }
            0xD9 | 0xDA => return Err("the JPEG stream has no frame header before its scan".into()),
            _ => {}
        }
        let len = data
            .get(i + 2..i + 4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or("the JPEG stream ends inside a marker segment")?;
        if len < 2 {
            return Err(format!("a JPEG marker segment of length {len}"));
        }
        let segment = data.get(i + 4..i + 2 + len).ok_or("the JPEG stream ends inside a marker segment")?;
        if is_frame_marker(marker) {
            return match *segment {
                [precision, h0, h1, w0, w1, components, ..] => Ok(FrameHeader {
                    precision,
                    height: u16::from_be_bytes([h0, h1]),
                    width: u16::from_be_bytes([w0, w1]),
                    components,
                }),
                _ => Err("the JPEG frame header is cut short".into()),
            };
        }
        i += 2 + len;
    }
}

/// Check a stream's frame header against the image: its size must be Rows x Columns (a height of
/// 0, which a DNL marker would set later, is refused too) and its components at most the
/// samples per pixel.
pub(crate) fn check_stream(data: &[u8], cols: u32, rows: u32, samples: u16) -> Result<(), String> {
    let f = frame_header(data)?;
    if (u32::from(f.width), u32::from(f.height)) != (cols, rows) {
        return Err(format!("the JPEG frame header says {}x{}, the image is {cols}x{rows}", f.width, f.height));
    }
    if f.components == 0 || u16::from(f.components) > samples {
        return Err(format!(
            "the JPEG frame header has {} components, the image {samples} samples per pixel",
            f.components
        ));
    }
    Ok(())
}

/// Check every stream among an image's fragments (those that start one: a frame may continue over
/// more fragments) against the image; at least one must be there.
pub(crate) fn check_fragments(fragments: &[Vec<u8>], cols: u32, rows: u32, samples: u16) -> Result<(), String> {
    let mut found = false;
    for f in fragments.iter().filter(|f| f.starts_with(&[0xFF, 0xD8])) {
        check_stream(f, cols, rows, samples)?;
        found = true;
    }
    if found { Ok(()) } else { Err("no JPEG stream (start-of-image marker) in the pixel data".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOI, an APP0 segment, fill bytes, a frame header of `marker` for `w` x `h` with `nf`
    /// components, then SOS and EOI.
    fn stream(marker: u8, w: u16, h: u16, nf: u8) -> Vec<u8> {
        let mut s = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, b'J', b'F', 0xFF, 0xFF, marker];
        let len = 8 + 3 * u16::from(nf);
        s.extend(len.to_be_bytes());
        s.push(16);
        s.extend(h.to_be_bytes());
        s.extend(w.to_be_bytes());
        s.push(nf);
        for c in 0..nf {
            s.extend([c + 1, 0x11, 0]);
        }
        s.extend([0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 1, 0, 0, 0x12, 0x34, 0xFF, 0xD9]);
        s
    }

    #[test]
    fn a_frame_header_that_fits_the_image_passes_for_every_process() {
        for marker in [0xC0, 0xC1, 0xC3, 0xF7] {
            assert_eq!(check_stream(&stream(marker, 512, 400, 1), 512, 400, 1), Ok(()), "{marker:X}");
        }
        let f = frame_header(&stream(0xC3, 512, 400, 1)).unwrap();
        assert_eq!(f, FrameHeader { precision: 16, width: 512, height: 400, components: 1 });
        assert_eq!(check_fragments(&[stream(0xC3, 8, 8, 1), vec![0x12, 0x34]], 8, 8, 1), Ok(()));
    }

    #[test]
    fn a_frame_header_larger_than_the_image_is_an_error_before_any_decoding() {
        let e = check_stream(&stream(0xC3, 65535, 65535, 1), 512, 512, 1).unwrap_err();
        assert!(e.contains("65535x65535") && e.contains("512x512"), "{e}");
        assert!(check_stream(&stream(0xC3, 512, 0, 1), 512, 512, 1).is_err(), "a DNL height");
        assert!(check_stream(&stream(0xC3, 512, 512, 3), 512, 512, 1).unwrap_err().contains("3 components"));
        assert!(check_fragments(&[stream(0xC3, 8, 8, 1), stream(0xC3, 9, 8, 1)], 8, 8, 1).is_err());
        assert!(check_fragments(&[vec![0x12, 0x34]], 8, 8, 1).is_err(), "no stream at all");
    }

    #[test]
    fn a_broken_stream_is_an_error_not_a_panic() {
        let whole = stream(0xC3, 8, 8, 1);
        for n in 0..whole.len() {
            let _ = frame_header(&whole[..n]);
        }
        assert!(frame_header(&whole[..20]).is_err());
        assert!(frame_header(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).unwrap_err().contains("no frame header"));
        assert!(frame_header(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 1]).unwrap_err().contains("length 1"));
        assert!(frame_header(&[0x00, 0xD8]).is_err());
    }

    #[test]
    fn the_jpeg_family_is_recognised_by_its_transfer_syntaxes() {
        for uid in
            ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.81"]
        {
            assert!(is_jpeg_transfer_syntax(uid), "{uid}");
        }
        for uid in ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.5"]
        {
            assert!(!is_jpeg_transfer_syntax(uid), "{uid}");
        }
    }
}
