//! RLE Lossless (PS3.5 Annex G) for grey CT frames, decoded here with every length checked.
//!
//! dicom-rs's RLE adapter (dicom-transfer-syntax-registry 0.10.1) indexes past the end of its
//! output when a segment decodes to fewer bytes than Rows x Columns (found by the `ct_series`
//! fuzz target, docs/RELIABILITY.md). The format is small: a 64-byte header (segment count and
//! 15 offsets, little-endian u32) and one PackBits segment per byte of the sample, most
//! significant byte first.

/// Most segments an RLE frame may have (the header's 15 offsets).
const MAX_SEGMENTS: usize = 15;

/// Decode one frame of `pixels` grey samples of `bytes_per_sample` (1 or 2) bytes into raw
/// stored values.
pub fn decode_frame(fragment: &[u8], pixels: usize, bytes_per_sample: usize) -> Result<Vec<u16>, String> {
    if !(1..=2).contains(&bytes_per_sample) {
        return Err(format!("RLE with {bytes_per_sample} bytes per sample is not a grey CT frame"));
    }
    let word = |i: usize| -> Result<usize, String> {
        fragment
            .get(i * 4..i * 4 + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or_else(|| "RLE frame shorter than its 64-byte header".to_string())
    };
    let segments = word(0)?;
    if segments != bytes_per_sample {
        return Err(format!(
            "RLE frame has {segments} segment(s); one grey sample of {bytes_per_sample} byte(s) needs {bytes_per_sample}"
        ));
    }
    let mut offsets = Vec::with_capacity(segments + 1);
    for i in 1..=segments.min(MAX_SEGMENTS) {
        offsets.push(word(i)?);
    }
    offsets.push(fragment.len());
    let mut out = vec![0u16; pixels];
    for s in 0..segments {
        let (start, end) = (offsets[s], offsets[s + 1]);
        if start < 64 || start > end || end > fragment.len() {
            return Err(format!("RLE segment {} spans bytes {start}..{end} of a {}-byte frame", s + 1, fragment.len()));
        }
        let bytes = packbits(&fragment[start..end], pixels).map_err(|e| format!("RLE segment {}: {e}", s + 1))?;
        // The first segment holds the most significant bytes.
        let shift = 8 * (segments - 1 - s) as u32;
        for (o, b) in out.iter_mut().zip(&bytes) {
            *o |= u16::from(*b) << shift;
        }
    }
    Ok(out)
}

/// PackBits: a header byte n, then n + 1 literal bytes (n 0..=127) or one byte repeated 1 - n
/// times (n -127..=-1); -128 is skipped. Exactly `want` bytes, or an error.
fn packbits(src: &[u8], want: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(want);
    let mut i = 0;
    while out.len() < want {
        let Some(&n) = src.get(i) else {
            return Err(format!("decodes to {} bytes, {want} expected", out.len()));
        };
        i += 1;
        let n = n as i8;
        if n >= 0 {
            let len = n as usize + 1;
            let lit = src.get(i..i + len).ok_or("a literal run past the end of the segment")?;
            out.extend_from_slice(lit);
            i += len;
        } else if n != -128 {
            let b = *src.get(i).ok_or("a repeat run past the end of the segment")?;
            out.extend(std::iter::repeat_n(b, 1 + (-(n as i16)) as usize));
            i += 1;
        }
    }
    if out.len() > want {
        return Err(format!("decodes to more than the {want} bytes of the frame"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(segments: &[&[u8]]) -> Vec<u8> {
        let mut head = vec![0u8; 64];
        head[..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
        let mut at = 64u32;
        let mut body = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            head[4 + i * 4..8 + i * 4].copy_from_slice(&at.to_le_bytes());
            body.extend_from_slice(s);
            at += s.len() as u32;
        }
        [head, body].concat()
    }

    #[test]
    fn sixteen_bit_frames_join_their_two_segments_most_significant_first() {
        // MSB: 0x01 repeated 3 times, then literal 0x02; LSB: literal 0x10 0x20 0x30 0x40.
        let f = frame(&[&[0xFE, 0x01, 0x00, 0x02], &[0x03, 0x10, 0x20, 0x30, 0x40]]);
        assert_eq!(decode_frame(&f, 4, 2).unwrap(), [0x0110, 0x0120, 0x0130, 0x0240]);
        let f8 = frame(&[&[0x80, 0x01, 0x07, 0x09]]);
        assert_eq!(decode_frame(&f8, 2, 1).unwrap(), [7, 9]);
    }

    #[test]
    fn short_long_and_misplaced_segments_are_errors_not_panics() {
        let short = frame(&[&[0xFE, 0x01], &[0x00, 0x10]]);
        assert!(decode_frame(&short, 4, 2).unwrap_err().contains("decodes to"));
        let long = frame(&[&[0xF9, 0x01], &[0xF9, 0x02]]);
        assert!(decode_frame(&long, 4, 2).unwrap_err().contains("more than"));
        let mut bad = frame(&[&[0x00, 0x01], &[0x00, 0x02]]);
        bad[4..8].copy_from_slice(&9999u32.to_le_bytes());
        assert!(decode_frame(&bad, 1, 2).unwrap_err().contains("spans bytes"));
        assert!(decode_frame(&[0u8; 10], 1, 2).is_err());
        assert!(decode_frame(&frame(&[&[0x00, 0x01]]), 1, 2).unwrap_err().contains("segment(s)"));
    }
}
