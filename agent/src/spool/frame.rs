//! The on-disk framing of one spooled record: `len u32 LE | crc32 u32 LE | payload`, the
//! CRC (CRC-32/IEEE, `crc32fast`) over the payload. Pure functions over byte slices, so
//! recovery and reading are tested without files.

/// Bytes before the payload.
pub(crate) const HEADER: usize = 8;
/// Largest payload accepted when reading: twice the record limit, so a record written by
/// a build with a larger limit is still read, while a corrupt length is caught early.
pub(crate) const MAX_PAYLOAD: usize = 2 * wardmesh_proto::flow::MAX_RECORD_BYTES;

/// Appends one frame for `payload` to `out`.
pub(crate) fn encode(payload: &[u8], out: &mut Vec<u8>) {
    // Payloads are bounded by the record limit long before u32 matters.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// A whole, intact record; the next frame starts at `next`.
    Record { payload: &'a [u8], next: usize },
    /// `from..to` is damaged (bad length or CRC); an intact frame starts at `to`.
    Skip { from: usize, to: usize },
    /// Nothing intact from `from` to the end: a record torn by a crash mid-write (or a
    /// damaged tail).
    Tail { from: usize },
    /// Exactly at the end.
    End,
}

/// Decodes the frame at `pos`.
pub(crate) fn step(buf: &[u8], pos: usize) -> Step<'_> {
    if pos >= buf.len() {
        return Step::End;
    }
    if let Some((payload, next)) = intact_at(buf, pos) {
        return Step::Record { payload, next };
    }
    // Resynchronise: the next offset where an intact frame starts. A random 4-byte length
    // rarely passes the bounds check, so this is cheap even over a damaged megabyte.
    match (pos + 1..buf.len()).find(|&p| intact_at(buf, p).is_some()) {
        Some(to) => Step::Skip { from: pos, to },
        None => Step::Tail { from: pos },
    }
}

fn intact_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let header = buf.get(pos..pos.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    let start = pos + HEADER;
    let payload = buf.get(start..start + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, start + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(p, &mut out);
        }
        out
    }

    fn walk(buf: &[u8]) -> (Vec<Vec<u8>>, Vec<Step<'_>>) {
        let (mut records, mut damage, mut pos) = (Vec::new(), Vec::new(), 0);
        loop {
            match step(buf, pos) {
                Step::Record { payload, next } => {
                    records.push(payload.to_vec());
                    pos = next;
                }
                s @ Step::Skip { to, .. } => {
                    damage.push(s);
                    pos = to;
                }
                s @ Step::Tail { .. } => {
                    damage.push(s);
                    return (records, damage);
                }
                Step::End => return (records, damage),
            }
        }
    }

    #[test]
    fn intact_frames_read_back() {
        let buf = frames(&[b"one", b"two", b"three"]);
        let (records, damage) = walk(&buf);
        assert_eq!(
            records,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert!(damage.is_empty());
        assert_eq!(step(&[], 0), Step::End);
    }

    #[test]
    fn a_flipped_bit_skips_exactly_that_record() {
        let mut buf = frames(&[b"first record", b"second record", b"third record"]);
        let second = HEADER + b"first record".len();
        buf[second + HEADER + 3] ^= 0x40;
        let (records, damage) = walk(&buf);
        assert_eq!(
            records,
            [b"first record".to_vec(), b"third record".to_vec()]
        );
        let third = second + HEADER + b"second record".len();
        assert_eq!(
            damage,
            [Step::Skip {
                from: second,
                to: third
            }]
        );
    }

    #[test]
    fn a_corrupt_length_resynchronises() {
        let mut buf = frames(&[b"aaaa", b"bbbb", b"cccc"]);
        buf[HEADER + 4..HEADER + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let (records, damage) = walk(&buf);
        assert_eq!(records, [b"aaaa".to_vec(), b"cccc".to_vec()]);
        assert_eq!(damage.len(), 1);
    }

    #[test]
    fn a_torn_final_record_is_a_tail() {
        let whole = frames(&[b"kept", b"torn record"]);
        let kept_end = HEADER + 4;
        for cut in kept_end + 1..whole.len() {
            let (records, damage) = walk(&whole[..cut]);
            assert_eq!(records, [b"kept".to_vec()], "cut at {cut}");
            assert_eq!(damage, [Step::Tail { from: kept_end }], "cut at {cut}");
        }
    }
}
