//! The str writer of the hot paths (every key and string value the bridge
//! encodes, every envelope string): the header `rmp::encode::write_str_len`
//! writes, without its `Result` plumbing, which cost more than the writing.

/// Appends `b` as a MessagePack str (the smallest header form, as rmp).
#[inline]
pub fn put_str(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 0x1_0000 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_match_rmp_at_every_bound() {
        for n in [0usize, 1, 31, 32, 255, 256, 65535, 65536, 70000] {
            let text = "z".repeat(n);
            let mut want = Vec::new();
            rmp::encode::write_str(&mut want, &text).unwrap();
            let mut got = vec![7];
            super::put_str(&mut got, text.as_bytes());
            assert_eq!(got[0], 7);
            assert_eq!(got[1..], want[..], "{n}");
        }
    }
}
