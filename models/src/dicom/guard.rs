//! A length guard run before dicom-rs parses a file. dicom-rs allocates a value's declared length
//! before reading it, so a few-KB file claiming a 4 GB element costs gigabytes (seen: 1.2 GB RSS
//! for a 4 KB file). The guard walks every element header (into sequences and items, with
//! implicit VR inside undefined-length UN, over encapsulated fragments) and refuses any declared
//! length that runs past the end of the data. Only headers are read; values are skipped.

use super::DicomError;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Random access to the bytes being checked.
pub trait ByteSource {
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], pos: u64) -> bool;
}

impl ByteSource for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> bool {
        self.read_exact_at(buf, pos).is_ok()
    }
}

/// A file read through a 64 KiB window. The guard reads many small element headers close
/// together: one `pread` per window instead of one per header (about 50 fewer system calls for
/// each CT slice). The size is taken once, when the window is made.
pub struct WindowedFile<'a> {
    file: &'a File,
    size: u64,
    /// (offset of the window in the file, its bytes).
    window: std::cell::RefCell<(u64, Vec<u8>)>,
}

const WINDOW: usize = 64 << 10;

impl<'a> WindowedFile<'a> {
    pub fn new(file: &'a File) -> Self {
        WindowedFile { file, size: file.size(), window: std::cell::RefCell::new((0, Vec::new())) }
    }
}

impl ByteSource for WindowedFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> bool {
        let want_end = pos.saturating_add(buf.len() as u64);
        if want_end > self.size {
            return false;
        }
        if buf.len() > WINDOW {
            return self.file.read_exact_at(buf, pos).is_ok();
        }
        let mut w = self.window.borrow_mut();
        let (start, data) = &mut *w;
        if pos < *start || want_end > *start + data.len() as u64 {
            let n = (self.size - pos).min(WINDOW as u64) as usize;
            data.resize(n, 0);
            if self.file.read_exact_at(data, pos).is_err() {
                data.clear();
                return false;
            }
            *start = pos;
        }
        let from = (pos - *start) as usize;
        buf.copy_from_slice(&data[from..from + buf.len()]);
        true
    }
}

impl ByteSource for [u8] {
    fn size(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, buf: &mut [u8], pos: u64) -> bool {
        let Ok(p) = usize::try_from(pos) else { return false };
        match self.get(p..p + buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

/// Most element headers walked in one file (bounds the time a hostile file can cost).
const MAX_ELEMENTS: u32 = 2_000_000;
/// Deepest nesting of sequences and items.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, PartialEq)]
enum Frame {
    /// A sequence; `implicit` tells how its items' elements are encoded; `end` is where a
    /// defined-length one ends (its items must end exactly there).
    Sequence {
        implicit: bool,
        end: Option<u64>,
    },
    /// An item of a sequence, `end` as for a sequence; `last` is the tag of its last element.
    Item {
        implicit: bool,
        end: Option<u64>,
        last: u32,
    },
    Fragments,
}

impl Frame {
    fn end(&self) -> Option<u64> {
        match self {
            Frame::Sequence { end, .. } | Frame::Item { end, .. } => *end,
            Frame::Fragments => None,
        }
    }
}

/// Close the defined-length sequences and items that end at `pos`; refuse a walk that went past
/// the end of one. A defined-length sequence is walked item by item (its elements are checked
/// too) where dicom-rs may read the same bytes as one value, so the two agree on where the next
/// element starts only if the contents end exactly at the declared length (found by fuzzing: a
/// value that began like an item but ran past its length put dicom-rs 60 bytes out of step with
/// the guard, and it allocated 808 MB for a 1.5 KB RTSTRUCT).
fn close_frames(stack: &mut Vec<Frame>, pos: u64) -> Result<(), DicomError> {
    if let Some(end) = stack.iter().filter_map(Frame::end).find(|&end| pos > end) {
        return Err(DicomError::Parse(format!(
            "the contents of a sequence or item run past its declared end at byte {end} (to byte {pos})"
        )));
    }
    while stack.last().and_then(Frame::end) == Some(pos) {
        stack.pop();
    }
    Ok(())
}

/// Walk the data set from `start` to the end of `src`. `explicit` and `big_endian` describe the
/// transfer syntax.
pub fn check_lengths(
    src: &(impl ByteSource + ?Sized),
    start: u64,
    explicit: bool,
    big_endian: bool,
) -> Result<(), DicomError> {
    let end = src.size();
    let mut pos = start;
    let mut stack: Vec<Frame> = Vec::new();
    let mut count = 0u32;
    // The tag of the last top-level element: tags ascend within a data set (PS3.5 7.1).
    let mut top_last = 0u32;
    let too_long = |pos: u64, len: u64| {
        DicomError::Incomplete(format!(
            "element at byte {pos} declares {len} bytes but only {} remain (truncated, still copying, or a hostile length)",
            end.saturating_sub(pos)
        ))
    };
    while pos < end {
        close_frames(&mut stack, pos)?;
        count += 1;
        if count > MAX_ELEMENTS {
            return Err(DicomError::OverLimit {
                what: "DICOM elements",
                value: u64::from(count),
                limit: u64::from(MAX_ELEMENTS),
            });
        }
        let mut h = [0u8; 8];
        if !src.read_at(&mut h, pos) {
            // Fewer than 8 bytes left: trailing padding is tolerated only at top level.
            if stack.is_empty() {
                return Ok(());
            }
            return Err(DicomError::Incomplete(format!("data ends inside a sequence at byte {pos}")));
        }
        let u16_at =
            |b: &[u8]| if big_endian { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) };
        let u32_at = |b: &[u8]| {
            if big_endian {
                u32::from_be_bytes([b[0], b[1], b[2], b[3]])
            } else {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
        };
        let (group, element) = (u16_at(&h[0..2]), u16_at(&h[2..4]));
        let implicit_here = match stack.iter().rev().find_map(|f| match f {
            Frame::Sequence { implicit, .. } | Frame::Item { implicit, .. } => Some(*implicit),
            Frame::Fragments => None,
        }) {
            Some(i) => i || !explicit,
            None => !explicit,
        };
        // Items and delimiters: always tag + 4-byte length.
        if group == 0xFFFE {
            let len = u32_at(&h[4..8]);
            match element {
                0xE000 => {
                    let in_fragments = stack.last() == Some(&Frame::Fragments);
                    if len == u32::MAX {
                        if in_fragments {
                            return Err(DicomError::Parse(format!("undefined-length fragment at byte {pos}")));
                        }
                        if stack.len() >= MAX_DEPTH {
                            return Err(DicomError::OverLimit {
                                what: "sequence nesting",
                                value: stack.len() as u64,
                                limit: MAX_DEPTH as u64,
                            });
                        }
                        stack.push(Frame::Item { implicit: implicit_here, end: None, last: 0 });
                        pos += 8;
                    } else {
                        let len = u64::from(len);
                        if pos + 8 + len > end {
                            return Err(too_long(pos, len));
                        }
                        // Fragment bytes are skipped; a defined-length item's elements are walked
                        // and must end where the item does.
                        if !in_fragments && len > 0 {
                            if stack.len() >= MAX_DEPTH {
                                return Err(DicomError::OverLimit {
                                    what: "sequence nesting",
                                    value: stack.len() as u64,
                                    limit: MAX_DEPTH as u64,
                                });
                            }
                            stack.push(Frame::Item { implicit: implicit_here, end: Some(pos + 8 + len), last: 0 });
                        }
                        pos += 8 + if in_fragments { len } else { 0 };
                    }
                }
                0xE00D => {
                    if matches!(stack.last(), Some(Frame::Item { end: None, .. })) {
                        stack.pop();
                    }
                    pos += 8;
                }
                0xE0DD => {
                    if matches!(stack.last(), Some(Frame::Sequence { end: None, .. } | Frame::Fragments)) {
                        stack.pop();
                    }
                    pos += 8;
                }
                _ => return Err(DicomError::Parse(format!("unknown item tag (FFFE,{element:04X}) at byte {pos}"))),
            }
            continue;
        }
        if matches!(stack.last(), Some(Frame::Sequence { .. })) {
            // A sequence holds items only. dicom-rs, expecting an item here, reads what follows
            // out of step with this walk (found by fuzzing: an undefined-length element followed
            // by a plain one made it read a 4 GiB value, 4.2 GB of memory for a 2.5 KB file).
            return Err(DicomError::Parse(format!(
                "element ({group:04X},{element:04X}) at byte {pos} sits in a sequence outside any item"
            )));
        }
        // Tags ascend within a data set or item, and a stored data set holds no command (0000)
        // or file meta (0002) elements (PS3.5 7.1, PS3.10 7.1). dicom-rs reads elements out of
        // order and of those groups in its own way (their VRs from its dictionary), out of step
        // with this walk (found by fuzzing: raw data sets of 40 and 242 bytes with tags going
        // backwards made it ask for 1.1 GB), so refuse them.
        let tag = (u32::from(group) << 16) | u32::from(element);
        if group == 0x0000 || group == 0x0002 {
            return Err(DicomError::Parse(format!(
                "element ({group:04X},{element:04X}) at byte {pos} belongs to the {} group, which a stored data set does not hold",
                if group == 0 { "command" } else { "file meta" }
            )));
        }
        let last = match stack.last_mut() {
            Some(Frame::Item { last, .. }) => last,
            _ => &mut top_last,
        };
        if tag <= *last {
            return Err(DicomError::Parse(format!(
                "element ({group:04X},{element:04X}) at byte {pos} is out of order (tags must ascend; it follows ({:04X},{:04X}))",
                *last >> 16,
                *last & 0xFFFF
            )));
        }
        *last = tag;
        let (hdr, len, vr): (u64, u32, [u8; 2]) = if implicit_here {
            (8, u32_at(&h[4..8]), *b"  ")
        } else {
            let vr = [h[4], h[5]];
            if !(vr[0].is_ascii_uppercase() && vr[1].is_ascii_uppercase()) {
                return Err(DicomError::Parse(format!("invalid VR bytes {:02X}{:02X} at byte {pos}", vr[0], vr[1])));
            }
            let Some(long) = long_length(&vr) else {
                // dicom-rs reads an unknown VR with a 4-byte length, as DCMTK does; rather than
                // guess with it, refuse (found by fuzzing: VR "CV" made a 644-byte header claim
                // a 1.3 GB value, and reading it took 1.3 GB of memory).
                return Err(DicomError::Parse(format!(
                    "unknown VR {:?} in element ({group:04X},{element:04X}) at byte {pos}",
                    String::from_utf8_lossy(&vr)
                )));
            };
            if long {
                let mut l = [0u8; 4];
                if !src.read_at(&mut l, pos + 8) {
                    return Err(DicomError::Incomplete(format!("element header at byte {pos} is cut off")));
                }
                (12, u32_at(&l), vr)
            } else {
                (8, u32::from(u16_at(&h[6..8])), vr)
            }
        };
        let is_pixel_data = group == 0x7FE0 && element == 0x0010;
        if len == u32::MAX && &vr == b"UN" && explicit {
            // dicom-rs 0.10 reads these into gigabytes of memory (seen: 3.6 GB for 674 bytes).
            return Err(DicomError::Parse(format!(
                "element ({group:04X},{element:04X}) at byte {pos} is a sequence of unknown VR (UN) with undefined length, which this appliance cannot read safely"
            )));
        }
        if len == u32::MAX {
            if stack.len() >= MAX_DEPTH {
                return Err(DicomError::OverLimit {
                    what: "sequence nesting",
                    value: stack.len() as u64,
                    limit: MAX_DEPTH as u64,
                });
            }
            let frame = if is_pixel_data {
                Frame::Fragments
            } else {
                // Contents of an undefined-length UN are implicit VR little endian.
                Frame::Sequence { implicit: implicit_here || &vr == b"UN", end: None }
            };
            stack.push(frame);
            pos += hdr;
            continue;
        }
        let len = u64::from(len);
        if pos + hdr + len > end {
            return Err(too_long(pos, len));
        }
        // A number's value holds whole numbers: dicom-rs reads whole ones and goes on from
        // there, out of step with this walk by the remainder (found by fuzzing: a group length
        // of 6 bytes in a 36-byte raw data set made it ask for 905 MB). In implicit VR the VR is
        // the one dicom-rs takes, from the standard dictionary.
        let number_size = if implicit_here { dictionary_number_size(group, element) } else { number_size(&vr) };
        if let Some(size) = number_size
            && len % size != 0
        {
            return Err(DicomError::Parse(format!(
                "element ({group:04X},{element:04X}) at byte {pos} holds numbers of {size} bytes but is {len} bytes long"
            )));
        }
        // A defined-length sequence's items are walked (their elements are parsed too);
        // in implicit VR a sequence is recognised by its value starting with an item tag.
        let descend = &vr == b"SQ" || (implicit_here && len >= 8 && starts_with_item(src, pos + hdr, big_endian));
        if descend && len > 0 {
            if stack.len() >= MAX_DEPTH {
                return Err(DicomError::OverLimit {
                    what: "sequence nesting",
                    value: stack.len() as u64,
                    limit: MAX_DEPTH as u64,
                });
            }
            stack.push(Frame::Sequence { implicit: implicit_here, end: Some(pos + hdr + len) });
        }
        pos += hdr + if descend { 0 } else { len };
    }
    close_frames(&mut stack, pos)?;
    Ok(())
}

/// For a VR of DICOM PS3.5, whether explicit VR gives it a 4-byte length (after two reserved
/// bytes); `None` for bytes that are not a DICOM VR, which dicom-rs would read with a 4-byte
/// length where a 2-byte one was meant, so no reader here guesses.
pub(crate) fn long_length(vr: &[u8]) -> Option<bool> {
    let vr: [u8; 2] = vr.try_into().ok()?;
    if !KNOWN_VRS.contains(&vr) {
        return None;
    }
    Some(matches!(
        &vr,
        b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
    ))
}

/// The size of one number of a binary numeric VR, words included (PS3.5 6.2); `None` for the
/// others.
fn number_size(vr: &[u8; 2]) -> Option<u64> {
    match vr {
        b"US" | b"SS" | b"OW" => Some(2),
        b"UL" | b"SL" | b"FL" | b"AT" | b"OF" | b"OL" => Some(4),
        b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => Some(8),
        _ => None,
    }
}

/// As [`number_size`], for an element of implicit VR: its VR from the standard dictionary that
/// dicom-rs reads it with (group lengths are UL; US-or-SS and US-or-OW elements are 2 bytes,
/// and so are OB-or-OW ones, which implicit VR makes OW).
fn dictionary_number_size(group: u16, element: u16) -> Option<u64> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_core::{Tag, VR};
    if element == 0x0000 {
        return Some(4);
    }
    let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(Tag(group, element))?;
    match entry.vr() {
        VirtualVr::Exact(vr) => match vr {
            VR::US | VR::SS | VR::OW => Some(2),
            VR::UL | VR::SL | VR::FL | VR::AT | VR::OF | VR::OL => Some(4),
            VR::FD | VR::SV | VR::UV | VR::OD | VR::OV => Some(8),
            _ => None,
        },
        VirtualVr::Xs | VirtualVr::Lt | VirtualVr::Ox | VirtualVr::Px => Some(2),
        _ => None,
    }
}

/// The value representations of DICOM PS3.5 (2024), the only ones a data set may use.
const KNOWN_VRS: [[u8; 2]; 34] = [
    *b"AE", *b"AS", *b"AT", *b"CS", *b"DA", *b"DS", *b"DT", *b"FD", *b"FL", *b"IS", *b"LO", *b"LT", *b"OB", *b"OD",
    *b"OF", *b"OL", *b"OV", *b"OW", *b"PN", *b"SH", *b"SL", *b"SQ", *b"SS", *b"ST", *b"SV", *b"TM", *b"UC", *b"UI",
    *b"UL", *b"UN", *b"UR", *b"US", *b"UT", *b"UV",
];

fn starts_with_item(src: &(impl ByteSource + ?Sized), pos: u64, big_endian: bool) -> bool {
    let mut t = [0u8; 4];
    src.read_at(&mut t, pos) && if big_endian { t == [0xFF, 0xFE, 0xE0, 0x00] } else { t == [0xFE, 0xFF, 0x00, 0xE0] }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An implicit VR little endian element header: tag and 4-byte length.
    fn implicit(tag: (u16, u16), len: u32) -> Vec<u8> {
        let mut v = tag.0.to_le_bytes().to_vec();
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v
    }

    fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = tag.0.to_le_bytes().to_vec();
        v.extend_from_slice(&tag.1.to_le_bytes());
        v.extend_from_slice(vr);
        v.extend_from_slice(&(value.len() as u16).to_le_bytes());
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn the_windowed_file_reads_what_the_file_holds() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        let w = WindowedFile::new(&f);
        assert_eq!(w.size(), 200_000);
        // Forward, backward, across a window's end, larger than a window, past the end.
        for (pos, len) in [(0, 8), (10, 4), (65_530, 12), (5, 3), (100_000, 70_000), (199_990, 10), (199_995, 6)] {
            let mut buf = vec![0u8; len];
            let ok = w.read_at(&mut buf, pos as u64);
            let want = bytes.get(pos..pos + len);
            assert_eq!(ok, want.is_some(), "{pos}+{len}");
            if let Some(want) = want {
                assert_eq!(buf, want, "{pos}+{len}");
            }
        }
    }

    #[test]
    fn a_tiny_data_set_claiming_gigabytes_is_refused() {
        let mut d = el((0x0008, 0x0060), b"CS", b"CT");
        d.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F]);
        let err = check_lengths(d.as_slice(), 0, true, false).unwrap_err();
        assert!(err.to_string().contains("declares 2147483647 bytes"), "{err}");
    }

    #[test]
    fn nested_sequences_and_fragments_walk_cleanly() {
        let mut d = el((0x0008, 0x0060), b"CS", b"CT");
        // (0008,1115) SQ undefined length, one undefined-length item with one element.
        d.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        d.extend(el((0x0008, 0x1150), b"UI", b"1.2"));
        d.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        // Encapsulated pixel data: empty offset table, one 4-byte fragment, delimiter.
        d.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        d.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 4, 0, 0, 0, 0xFF, 0xD8, 0xFF, 0xD9]);
        d.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        check_lengths(d.as_slice(), 0, true, false).unwrap();
        // A fragment claiming more than remains is caught.
        let n = d.len();
        d[n - 16] = 0xFF;
        assert!(check_lengths(d.as_slice(), 0, true, false).is_err());
    }

    /// Found by fuzzing (target `roi`): an undefined-length element (walked as a sequence, as
    /// dicom-rs reads it) followed by a plain element instead of an item put dicom-rs out of step
    /// with the guard, and it read a 4 GiB value (4.2 GB of memory for a 2.5 KB RTSTRUCT). A
    /// sequence holds items only; private sequences of undefined length still read.
    #[test]
    fn an_element_in_a_sequence_outside_any_item_is_refused() {
        let mut d = implicit((0x0008, 0x0060), 2);
        d.extend_from_slice(b"RT");
        // (3006,0010) ReferencedFrameOfReferenceSequence, undefined length, one empty item.
        let mut ok = d.clone();
        ok.extend(implicit((0x3006, 0x0010), u32::MAX));
        ok.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        ok.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        check_lengths(ok.as_slice(), 0, false, false).unwrap();
        // A private sequence of undefined length with an item holding one element: fine.
        let mut private = d.clone();
        private.extend(implicit((0x0029, 0x1010), u32::MAX));
        private.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        private.extend(implicit((0x0029, 0x1011), 2));
        private.extend_from_slice(b"AB");
        private.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        private.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        check_lengths(private.as_slice(), 0, false, false).unwrap();
        // The fuzzer's shape: an undefined-length private creator, then a plain element.
        for tag in [(0xA207, 0x0039), (0x0029, 0x1010), (0x3006, 0x0010)] {
            let mut bad = d.clone();
            bad.extend(implicit(tag, u32::MAX));
            bad.extend(implicit((0xCFFA, 0x0009), 6));
            bad.extend_from_slice(b"122507");
            bad.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
            let err = check_lengths(bad.as_slice(), 0, false, false).unwrap_err();
            assert!(err.to_string().contains("outside any item"), "{tag:?}: {err}");
        }
    }
    /// Found by fuzzing (target `dicom_header`): VR "CV" is not a DICOM VR; the guard read its
    /// 2-byte length (12) where dicom-rs, like DCMTK, reads a 4-byte one (1.3 GB), and the
    /// header read allocated 1.3 GB for a 644-byte file.
    #[test]
    fn an_unknown_vr_is_refused() {
        let mut d = el((0x0028, 0x0002), b"US", &[1, 0]);
        d.extend(el((0x0028, 0x0004), b"CV", b"MONOCHROME2 "));
        d.extend(el((0x0028, 0x0010), b"US", &[45, 0]));
        let err = check_lengths(d.as_slice(), 0, true, false).unwrap_err();
        assert!(err.to_string().contains("unknown VR \"CV\""), "{err}");
        // The same element with its proper VR walks.
        let mut ok = el((0x0028, 0x0002), b"US", &[1, 0]);
        ok.extend(el((0x0028, 0x0004), b"CS", b"MONOCHROME2 "));
        check_lengths(ok.as_slice(), 0, true, false).unwrap();
    }
    /// Found by fuzzing (target `roi`, an implicit-VR RTSTRUCT): a defined-length value that
    /// begins like an item is walked as a sequence, where dicom-rs may read it as one value; its
    /// contents ran past its length, the two lost step, and dicom-rs allocated 808 MB. Contents
    /// must now end exactly at a defined length, which puts both at the same next element.
    #[test]
    fn sequence_contents_must_end_at_the_declared_length() {
        let item = |len: u32| {
            let mut v = vec![0xFE, 0xFF, 0x00, 0xE0];
            v.extend_from_slice(&len.to_le_bytes());
            v
        };
        let head = {
            let mut t = implicit((0x0008, 0x0060), 2);
            t.extend_from_slice(b"RT");
            t
        };
        // (3006,0039) of 26 bytes: one item of 18 bytes holding (3006,0042) of 10 bytes.
        let mut ok = head.clone();
        ok.extend(implicit((0x3006, 0x0039), 26));
        ok.extend(item(18));
        ok.extend(implicit((0x3006, 0x0042), 10));
        ok.extend_from_slice(b"POINT     ");
        check_lengths(ok.as_slice(), 0, false, false).unwrap();
        // The same with an undefined-length item closed inside the sequence's 34 bytes.
        let mut undefined = head.clone();
        undefined.extend(implicit((0x3006, 0x0039), 34));
        undefined.extend(item(u32::MAX));
        undefined.extend(implicit((0x3006, 0x0042), 10));
        undefined.extend_from_slice(b"POINT     ");
        undefined.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        check_lengths(undefined.as_slice(), 0, false, false).unwrap();
        // The fuzzer's shape: a tag of 20 bytes unknown to the dictionary that begins with an
        // undefined-length item whose element runs on past the 20 bytes.
        let mut bad = head.clone();
        bad.extend(implicit((0x0009, 0x1C00), 20));
        bad.extend(item(u32::MAX));
        bad.extend(implicit((0x3006, 0x0042), 10));
        bad.extend_from_slice(b"POINT     ");
        let err = check_lengths(bad.as_slice(), 0, false, false).unwrap_err();
        assert!(err.to_string().contains("past its declared end"), "{err}");
        // A defined-length item whose element runs past the item.
        let mut over = head.clone();
        over.extend(implicit((0x3006, 0x0039), 26));
        over.extend(item(12));
        over.extend(implicit((0x3006, 0x0042), 10));
        over.extend_from_slice(b"POINT     ");
        let err = check_lengths(over.as_slice(), 0, false, false).unwrap_err();
        assert!(err.to_string().contains("past its declared end"), "{err}");
    }
    /// Found by fuzzing (target `dicom_header`): raw data sets with tags going backwards and
    /// command-group elements, which dicom-rs reads its own way (it asked for 1.1 GB).
    #[test]
    fn tags_out_of_order_and_command_or_meta_elements_are_refused() {
        let mut ok = el((0x0008, 0x0060), b"CS", b"CT");
        ok.extend(el((0x0010, 0x0020), b"LO", b"P1"));
        check_lengths(ok.as_slice(), 0, true, false).unwrap();
        let mut backwards = el((0x0010, 0x0020), b"LO", b"P1");
        backwards.extend(el((0x0008, 0x0060), b"CS", b"CT"));
        let err = check_lengths(backwards.as_slice(), 0, true, false).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
        let mut twice = el((0x0008, 0x0060), b"CS", b"CT");
        twice.extend(el((0x0008, 0x0060), b"CS", b"CT"));
        assert!(check_lengths(twice.as_slice(), 0, true, false).is_err());
        for group in [0x0000u16, 0x0002] {
            let d = el((group, 0x0010), b"UI", b"1.2");
            let err = check_lengths(d.as_slice(), 0, true, false).unwrap_err();
            assert!(err.to_string().contains("does not hold"), "{err}");
        }
        // Each item starts its own order.
        let mut items = el((0x0008, 0x0060), b"CS", b"CT");
        items.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        for _ in 0..2 {
            items.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
            items.extend(el((0x0008, 0x1150), b"UI", b"1.2"));
            items.extend(el((0x0008, 0x1155), b"UI", b"1.3"));
            items.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        }
        items.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        items.extend(el((0x0010, 0x0020), b"LO", b"P1"));
        check_lengths(items.as_slice(), 0, true, false).unwrap();
    }
    /// Found by fuzzing (target `dicom_header`): a group length of 6 bytes. dicom-rs reads one
    /// UL and goes on 2 bytes early, where it read a 905 MB length.
    #[test]
    fn numbers_must_fill_their_value() {
        let implicit = |tag: (u16, u16), value: &[u8]| {
            let mut v = implicit(tag, value.len() as u32);
            v.extend_from_slice(value);
            v
        };
        // Implicit VR: a group length (UL), Rows (US), Image Position (DS: not a number VR).
        for (tag, value, ok) in [
            ((0x6705u16, 0x0000u16), &[1u8, 0, 0, 0, 0, 0][..], false),
            ((0x6705, 0x0000), &[1, 0, 0, 0][..], true),
            ((0x0028, 0x0010), &[1, 0, 0][..], false),
            ((0x0028, 0x0010), &[1, 0][..], true),
            ((0x0020, 0x0032), &b"1\\2\\3 "[..], true),
            // Overlay data (OB or OW, so OW in implicit VR) of 9 bytes: found by the long run.
            ((0x60F3, 0x3000), &[0u8; 9][..], false),
            ((0x60F3, 0x3000), &[0u8; 8][..], true),
        ] {
            let d = implicit(tag, value);
            let r = check_lengths(d.as_slice(), 0, false, false);
            assert_eq!(r.is_ok(), ok, "{tag:?} {} bytes: {r:?}", value.len());
        }
        // Explicit VR: the VR written decides.
        assert!(check_lengths(el((0x0028, 0x0010), b"US", &[1, 0, 0]).as_slice(), 0, true, false).is_err());
        check_lengths(el((0x0028, 0x0010), b"US", &[1, 0]).as_slice(), 0, true, false).unwrap();
        assert!(check_lengths(el((0x0018, 0x0050), b"FD", &[0; 6]).as_slice(), 0, true, false).is_err());
    }
}
