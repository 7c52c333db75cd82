//! Reading the envelope fields of a received message by position.
//!
//! The message is already framed (complete, in one slice), so each reader takes
//! the slice and an offset and returns what it found with the offset after it:
//! no `Read` cursor written back through a reference on every field, which cost
//! more than the reading itself on the per-message path.

use std::ops::Range;

/// The big-endian unsigned number in `bytes[at..at + n]`.
fn be_at(bytes: &[u8], at: usize, n: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(n)?)?;
    Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The span of the bytes of the str or bin value at `at` (its end is where the
/// value ends); `None` for any other type or a value cut short.
pub fn text_at(bytes: &[u8], at: usize) -> Option<Range<usize>> {
    let b = *bytes.get(at)?;
    let (head, len) = match b {
        0xa0..=0xbf => (1, u64::from(b & 0x1f)),
        0xd9 | 0xc4 => (2, be_at(bytes, at + 1, 1)?),
        0xda | 0xc5 => (3, be_at(bytes, at + 1, 2)?),
        0xdb | 0xc6 => (5, be_at(bytes, at + 1, 4)?),
        _ => return None,
    };
    let start = at + head;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= bytes.len()).then_some(start..end)
}

/// The integer at `at` (any integer form) as `T` and the offset after it; `None`
/// for another type, a value cut short or one out of `T`'s range.
pub fn int_at<T: TryFrom<i128>>(bytes: &[u8], at: usize) -> Option<(T, usize)> {
    let b = *bytes.get(at)?;
    let (n, len): (i128, usize) = match b {
        0x00..=0x7f => (i128::from(b), 1),
        0xe0..=0xff => (i128::from(b as i8), 1),
        0xcc => (i128::from(be_at(bytes, at + 1, 1)?), 2),
        0xcd => (i128::from(be_at(bytes, at + 1, 2)?), 3),
        0xce => (i128::from(be_at(bytes, at + 1, 4)?), 5),
        0xcf => (i128::from(be_at(bytes, at + 1, 8)?), 9),
        0xd0 => (i128::from(be_at(bytes, at + 1, 1)? as u8 as i8), 2),
        0xd1 => (i128::from(be_at(bytes, at + 1, 2)? as u16 as i16), 3),
        0xd2 => (i128::from(be_at(bytes, at + 1, 4)? as u32 as i32), 5),
        0xd3 => (i128::from(be_at(bytes, at + 1, 8)? as i64), 9),
        _ => return None,
    };
    Some((T::try_from(n).ok()?, at + len))
}

/// The element count of the array header at `at` and the offset after it.
pub fn array_at(bytes: &[u8], at: usize) -> Option<(u32, usize)> {
    count_at(bytes, at, 0x90, 0xdc)
}

/// The entry count of the map header at `at` and the offset after it.
pub fn map_at(bytes: &[u8], at: usize) -> Option<(u32, usize)> {
    count_at(bytes, at, 0x80, 0xde)
}

/// The count of an array or map header at `at` and the offset after it: the
/// fix form `fix..=fix | 0x0f`, then the 16-bit form `wide` and the 32-bit form
/// `wide + 1`.
#[inline]
fn count_at(bytes: &[u8], at: usize, fix: u8, wide: u8) -> Option<(u32, usize)> {
    let b = *bytes.get(at)?;
    if b & 0xf0 == fix {
        Some((u32::from(b & 0x0f), at + 1))
    } else if b == wide {
        Some((be_at(bytes, at + 1, 2)? as u32, at + 3))
    } else if b == wide + 1 {
        Some((be_at(bytes, at + 1, 4)? as u32, at + 5))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reader against rmp's decoder of the same bytes.
    #[test]
    fn readers_agree_with_rmp() {
        let ints: [i64; 12] = [
            0,
            5,
            127,
            128,
            -1,
            -32,
            -33,
            300,
            -300,
            70_000,
            -70_000,
            i64::MIN,
        ];
        for v in ints {
            let mut b = vec![0xc0];
            rmp::encode::write_sint(&mut b, v).unwrap();
            assert_eq!(int_at::<i64>(&b, 1), Some((v, b.len())), "{v}");
            let mut rd = &b[1..];
            let want: Option<u8> = rmp::decode::read_int(&mut rd).ok();
            assert_eq!(int_at::<u8>(&b, 1).map(|r| r.0), want, "{v} as u8");
            // Cut short.
            assert_eq!(int_at::<i64>(&b[..b.len() - 1], 1), None);
        }
        for v in [0u64, 200, 65_535, 1 << 32, u64::MAX] {
            let mut b = Vec::new();
            rmp::encode::write_uint(&mut b, v).unwrap();
            assert_eq!(int_at::<u64>(&b, 0), Some((v, b.len())));
            let want: Option<u32> = rmp::decode::read_int(&mut &b[..]).ok();
            assert_eq!(int_at::<u32>(&b, 0).map(|r| r.0), want);
            let want: Option<i64> = rmp::decode::read_int(&mut &b[..]).ok();
            assert_eq!(int_at::<i64>(&b, 0).map(|r| r.0), want);
        }
        assert_eq!(int_at::<i64>(&[0xca, 0, 0, 0, 0], 0), None, "a float");
        assert_eq!(int_at::<i64>(&[0xa1, b'1'], 0), None, "a string");

        for n in [0usize, 3, 31, 32, 255, 256, 70_000] {
            let text = "t".repeat(n);
            let mut s = Vec::new();
            rmp::encode::write_str(&mut s, &text).unwrap();
            let head = s.len() - n;
            assert_eq!(text_at(&s, 0), Some(head..s.len()));
            assert_eq!(text_at(&s[..s.len() - 1], 0), None, "cut short");
            let mut b = Vec::new();
            rmp::encode::write_bin(&mut b, text.as_bytes()).unwrap();
            assert_eq!(text_at(&b, 0), Some(b.len() - n..b.len()));

            let mut a = Vec::new();
            rmp::encode::write_array_len(&mut a, n as u32).unwrap();
            assert_eq!(array_at(&a, 0), Some((n as u32, a.len())));
            assert_eq!(map_at(&a, 0), None);
            let mut m = Vec::new();
            rmp::encode::write_map_len(&mut m, n as u32).unwrap();
            assert_eq!(map_at(&m, 0), Some((n as u32, m.len())));
            assert_eq!(array_at(&m, 0), None);
            assert_eq!(text_at(&m, 0), None);
        }
        assert_eq!(array_at(&[0xdc, 0], 0), None, "header cut short");
    }
}
