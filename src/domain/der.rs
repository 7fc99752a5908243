//! A minimal DER writer for the few structures clm assembles by hand (SPKI
//! from token attributes, ECDSA signatures, the AIA extension). Shared by
//! `hsm` and `pki`, which must not import each other.

/// Tag-length-value with a definite length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    push_header(&mut out, tag, content.len());
    out.extend_from_slice(content);
    out
}

/// Appends the tag and definite length of a TLV whose content follows.
pub fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

pub fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// SEQUENCE { before ‖ middle ‖ after }, written around `middle` in its own
/// buffer: for contents of tens of megabytes (a large CRL's entries and
/// its TBSCertList) that a copy beside them would double.
pub fn sequence_around(before: &[&[u8]], middle: Vec<u8>, after: &[&[u8]]) -> Vec<u8> {
    let len = |parts: &[&[u8]]| parts.iter().map(|p| p.len()).sum::<usize>();
    let mut head = Vec::with_capacity(len(before) + 10);
    push_header(&mut head, 0x30, len(before) + middle.len() + len(after));
    for part in before {
        head.extend_from_slice(part);
    }
    let mut out = middle;
    out.reserve_exact(head.len() + len(after));
    for part in after {
        out.extend_from_slice(part);
    }
    out.splice(0..0, head);
    out
}

/// A non-negative INTEGER from big-endian magnitude bytes: leading zeros
/// stripped, a zero byte prepended where the top bit would make it negative.
pub fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(magnitude.len() + 3);
    push_unsigned_integer(&mut out, magnitude);
    out
}

/// [`unsigned_integer`] appended to `out`, without allocating.
pub fn push_unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let trimmed = &magnitude[skip..];
    let pad = trimmed.first().is_none_or(|b| b & 0x80 != 0);
    push_header(out, 0x02, trimmed.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(trimmed);
}

pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0); // no unused bits
    content.extend_from_slice(bytes);
    tlv(0x03, &content)
}

pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(0x04, bytes)
}

pub const NULL: [u8; 2] = [0x05, 0x00];

/// Splits one TLV off the front of `input`: (tag, content, rest).
pub fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(
            unsigned_integer(&[0x00, 0x00, 0x7f]),
            vec![0x02, 0x01, 0x7f]
        );
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[0x00]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn a_sequence_around_is_the_sequence() {
        let middle = vec![5u8; 300];
        for (before, after) in [
            (&[][..], &[][..]),
            (&[&[1u8, 2][..]][..], &[&[3u8][..], &[4u8; 200][..]][..]),
        ] {
            let parts: Vec<&[u8]> = before
                .iter()
                .copied()
                .chain([middle.as_slice()])
                .chain(after.iter().copied())
                .collect();
            assert_eq!(
                sequence_around(before, middle.clone(), after),
                sequence(&parts)
            );
        }
    }

    #[test]
    fn long_lengths_round_trip() {
        let content = vec![7u8; 300];
        let encoded = tlv(0x04, &content);
        assert_eq!(&encoded[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (tag, body, rest) = read_tlv(&encoded).unwrap();
        assert_eq!((tag, body.len(), rest.len()), (0x04, 300, 0));
        assert!(read_tlv(&encoded[..10]).is_none());
    }
}
