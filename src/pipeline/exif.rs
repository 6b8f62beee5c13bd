//! EXIF orientation lookup, shared by the JPEG, PNG and WebP loaders.
//!
//! Only IFD0's Orientation entry matters here, and IFD0 is always the first directory of
//! the TIFF structure, so we read that one directory and follow no links. A general EXIF
//! parser (we used kamadak-exif) rejects the whole block when a next-IFD or sub-IFD
//! offset is broken or loops back on itself, and the photo then renders unrotated, while
//! browsers still honour the Orientation that IFD0 holds. Real cameras and editors write
//! such blocks (a sub-IFD truncated by a metadata stripper, a maker note that overwrote a
//! link), so the orientation must not depend on anything past IFD0.

/// The TIFF tag of Orientation.
const ORIENTATION_TAG: u16 = 0x0112;
/// TIFF field type SHORT (16-bit unsigned), the type the EXIF spec gives Orientation.
const TYPE_SHORT: u16 = 3;
/// TIFF field type LONG; some writers store Orientation as one.
const TYPE_LONG: u16 = 4;
/// Bytes in one IFD entry: tag, type, count (4), value or offset (4).
const ENTRY_BYTES: usize = 12;

/// The EXIF Orientation (1–8) in a TIFF-structured EXIF payload (without the `Exif\0\0`
/// prefix). Anything unreadable counts as 1: a broken EXIF block must not fail a render
/// whose pixels are fine.
pub fn orientation(tiff: &[u8]) -> u8 {
    ifd0_orientation(tiff)
        .filter(|v| (1..=8).contains(v))
        .map_or(1, |v| v as u8)
}

/// Orientation's value from IFD0, if IFD0 can be read as far as that entry.
fn ifd0_orientation(tiff: &[u8]) -> Option<u32> {
    let order = match tiff.get(0..2)? {
        b"II" => ByteOrder::Little,
        b"MM" => ByteOrder::Big,
        _ => return None,
    };
    if order.u16(tiff, 2)? != 42 {
        return None;
    }
    let ifd0 = order.u32(tiff, 4)? as usize;
    let count = order.u16(tiff, ifd0)? as usize;
    // Entries are sorted by tag in valid files, but damaged ones are what this is for:
    // look at every entry that is present, stop at the first one cut off by the end.
    (0..count).find_map(|i| {
        let entry = ifd0
            .checked_add(2)?
            .checked_add(i.checked_mul(ENTRY_BYTES)?)?;
        if order.u16(tiff, entry)? != ORIENTATION_TAG || order.u32(tiff, entry + 4)? != 1 {
            return None;
        }
        // A count-1 SHORT or LONG sits in the value field itself (left-justified).
        match order.u16(tiff, entry + 2)? {
            TYPE_SHORT => order.u16(tiff, entry + 8).map(u32::from),
            TYPE_LONG => order.u32(tiff, entry + 8),
            _ => None,
        }
    })
}

#[derive(Clone, Copy)]
enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    fn u16(self, data: &[u8], at: usize) -> Option<u16> {
        let bytes: [u8; 2] = data.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(match self {
            ByteOrder::Little => u16::from_le_bytes(bytes),
            ByteOrder::Big => u16::from_be_bytes(bytes),
        })
    }

    fn u32(self, data: &[u8], at: usize) -> Option<u32> {
        let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            ByteOrder::Little => u32::from_le_bytes(bytes),
            ByteOrder::Big => u32::from_be_bytes(bytes),
        })
    }
}

/// Strip the `Exif\0\0` header a JPEG APP1 segment (and some WebP/PNG writers) put in front.
pub fn strip_exif_header(data: &[u8]) -> &[u8] {
    data.strip_prefix(b"Exif\0\0").unwrap_or(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One IFD0 entry: (tag, type, count, value field as 4 bytes in file order).
    type Entry = (u16, u16, u32, [u8; 4]);

    /// A TIFF block with IFD0 at offset 8 holding `entries`, then `next_ifd`, then `tail`.
    fn tiff(big_endian: bool, entries: &[Entry], next_ifd: u32, tail: &[u8]) -> Vec<u8> {
        let u16b = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(if big_endian { b"MM" } else { b"II" });
        out.extend_from_slice(&u16b(42));
        out.extend_from_slice(&u32b(8));
        out.extend_from_slice(&u16b(entries.len() as u16));
        for &(tag, kind, count, value) in entries {
            out.extend_from_slice(&u16b(tag));
            out.extend_from_slice(&u16b(kind));
            out.extend_from_slice(&u32b(count));
            out.extend_from_slice(&value);
        }
        out.extend_from_slice(&u32b(next_ifd));
        out.extend_from_slice(tail);
        out
    }

    fn short(v: u16, big_endian: bool) -> [u8; 4] {
        let b = if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        [b[0], b[1], 0, 0]
    }

    /// ExifIFD pointer (0x8769) as a LONG pointing at `offset`.
    fn exif_pointer(offset: u32, big_endian: bool) -> Entry {
        let v = if big_endian {
            offset.to_be_bytes()
        } else {
            offset.to_le_bytes()
        };
        (0x8769, TYPE_LONG, 1, v)
    }

    #[test]
    fn reads_orientation_in_either_byte_order() {
        for big in [false, true] {
            for o in 1..=8u16 {
                let block = tiff(
                    big,
                    &[(ORIENTATION_TAG, TYPE_SHORT, 1, short(o, big))],
                    0,
                    &[],
                );
                assert_eq!(orientation(&block), o as u8, "big endian {big}");
            }
        }
    }

    #[test]
    fn a_next_ifd_link_back_into_ifd0_keeps_the_orientation() {
        // IFD0's next-IFD offset points at IFD0 itself (8): a loop.
        for big in [false, true] {
            let block = tiff(
                big,
                &[(ORIENTATION_TAG, TYPE_SHORT, 1, short(6, big))],
                8,
                &[],
            );
            assert_eq!(orientation(&block), 6);
        }
    }

    #[test]
    fn broken_sub_ifd_links_keep_the_orientation() {
        for big in [false, true] {
            // The Exif sub-IFD pointer points past the end, then at itself; next-IFD is
            // garbage far past the end.
            for pointer in [0xFFFF_FFF0, 8, 26] {
                let block = tiff(
                    big,
                    &[
                        (ORIENTATION_TAG, TYPE_SHORT, 1, short(8, big)),
                        exif_pointer(pointer, big),
                    ],
                    0x7FFF_FFFF,
                    &[],
                );
                assert_eq!(orientation(&block), 8, "pointer {pointer:#x}");
            }
        }
    }

    #[test]
    fn the_orientation_may_follow_other_entries_and_be_a_long() {
        let block = tiff(
            false,
            &[
                (0x010F, 2, 4, *b"Cam\0"),
                (0x0110, 2, 4, *b"X1\0\0"),
                (ORIENTATION_TAG, TYPE_LONG, 1, 3u32.to_le_bytes()),
            ],
            0,
            &[],
        );
        assert_eq!(orientation(&block), 3);
    }

    #[test]
    fn unreadable_or_out_of_range_counts_as_one() {
        assert_eq!(orientation(&[]), 1);
        assert_eq!(orientation(b"II*\0"), 1);
        assert_eq!(orientation(b"XX*\0\x08\0\0\0"), 1);
        let nine = tiff(
            false,
            &[(ORIENTATION_TAG, TYPE_SHORT, 1, short(9, false))],
            0,
            &[],
        );
        assert_eq!(orientation(&nine), 1);
        let zero = tiff(
            false,
            &[(ORIENTATION_TAG, TYPE_SHORT, 1, short(0, false))],
            0,
            &[],
        );
        assert_eq!(orientation(&zero), 1);
        // Count 2 is not a valid Orientation.
        let two = tiff(
            false,
            &[(ORIENTATION_TAG, TYPE_SHORT, 2, short(6, false))],
            0,
            &[],
        );
        assert_eq!(orientation(&two), 1);
        // IFD0 cut off inside the entry: nothing to read.
        let whole = tiff(
            false,
            &[(ORIENTATION_TAG, TYPE_SHORT, 1, short(6, false))],
            0,
            &[],
        );
        assert_eq!(orientation(&whole[..whole.len() - 8]), 1);
        // IFD0 offset past the end, or an entry count that runs past it.
        let mut far = whole.clone();
        far[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(orientation(&far), 1);
        let mut many = whole;
        many[8..10].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert_eq!(orientation(&many), 6, "entries present are still read");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep (the fuzz targets cover this in depth).
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut with_header = b"II*\0\x08\0\0\0".to_vec();
            with_header.extend_from_slice(&bytes);
            assert!((1..=8).contains(&orientation(&bytes)));
            assert!((1..=8).contains(&orientation(&with_header)));
        }
    }
}
