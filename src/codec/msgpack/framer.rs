//! Finds where one MessagePack value ends in a byte stream, resumably.
//!
//! MessagePack-RPC has no framing: messages are concatenated values. rmp decodes a
//! complete value but cannot resume one cut short by a socket read, and retrying
//! from the start after every read is quadratic for large messages. The framer
//! classifies markers with `rmp::Marker` and keeps a small stack of item counts,
//! so each byte is looked at once however the stream is split. It also enforces
//! the limits before anything is allocated: a declared length that would take the
//! message past `max_message_size` fails at once, and so does nesting deeper than
//! `max_depth`.

use std::fmt;

use rmp::Marker;

/// Bounds on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes (`max_message_size`).
    pub max_message_size: usize,
    /// Deepest nesting of arrays and maps, the envelope included.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 16 * 1024 * 1024,
            max_depth: 128,
        }
    }
}

/// Why a stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The message needs at least `at_least` bytes, more than `max`.
    TooLarge { at_least: u64, max: usize },
    /// Arrays/maps nested deeper than `max`.
    TooDeep { max: usize },
    /// Byte 0xc1, which MessagePack never uses, at `offset` in the message.
    BadMarker { offset: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge { at_least, max } => {
                write!(
                    f,
                    "message of at least {at_least} bytes exceeds max_message_size ({max})"
                )
            }
            FrameError::TooDeep { max } => write!(f, "message nested deeper than {max} levels"),
            FrameError::BadMarker { offset } => {
                write!(
                    f,
                    "malformed MessagePack: invalid byte 0xc1 at offset {offset}"
                )
            }
        }
    }
}

/// Where the header of one value ends and what follows it.
struct Head {
    /// Marker plus length fields.
    len: usize,
    /// Bytes of payload after the header (strings, binaries, extensions, scalars).
    payload: u64,
    /// Items of an array or map (a map counts keys and values).
    items: Option<u64>,
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Reads the header of the value whose marker is `rest[0]`; `None` if the length
/// field is not all there yet.
fn head(rest: &[u8], offset: usize) -> Result<Option<Head>, FrameError> {
    let marker = Marker::from_u8(rest[0]);
    // (bytes of the length field, fixed payload, container factor)
    let scalar = |payload: u64| {
        Ok(Some(Head {
            len: 1,
            payload,
            items: None,
        }))
    };
    let sized = |n: usize, extra: u64, factor: Option<u64>| {
        if rest.len() < 1 + n {
            return Ok(None);
        }
        let v = be(&rest[1..=n]);
        Ok(Some(match factor {
            Some(f) => Head {
                len: 1 + n,
                payload: 0,
                items: Some(v * f),
            },
            None => Head {
                len: 1 + n,
                payload: v + extra,
                items: None,
            },
        }))
    };
    match marker {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            scalar(0)
        }
        Marker::U8 | Marker::I8 => scalar(1),
        Marker::U16 | Marker::I16 => scalar(2),
        Marker::U32 | Marker::I32 | Marker::F32 => scalar(4),
        Marker::U64 | Marker::I64 | Marker::F64 => scalar(8),
        Marker::FixStr(n) => scalar(u64::from(n)),
        Marker::Str8 | Marker::Bin8 => sized(1, 0, None),
        Marker::Str16 | Marker::Bin16 => sized(2, 0, None),
        Marker::Str32 | Marker::Bin32 => sized(4, 0, None),
        // Extensions: type byte plus data.
        Marker::FixExt1 => scalar(2),
        Marker::FixExt2 => scalar(3),
        Marker::FixExt4 => scalar(5),
        Marker::FixExt8 => scalar(9),
        Marker::FixExt16 => scalar(17),
        Marker::Ext8 => sized(1, 1, None),
        Marker::Ext16 => sized(2, 1, None),
        Marker::Ext32 => sized(4, 1, None),
        Marker::FixArray(n) => Ok(Some(Head {
            len: 1,
            payload: 0,
            items: Some(u64::from(n)),
        })),
        Marker::FixMap(n) => Ok(Some(Head {
            len: 1,
            payload: 0,
            items: Some(2 * u64::from(n)),
        })),
        Marker::Array16 => sized(2, 0, Some(1)),
        Marker::Array32 => sized(4, 0, Some(1)),
        Marker::Map16 => sized(2, 0, Some(2)),
        Marker::Map32 => sized(4, 0, Some(2)),
        Marker::Reserved => Err(FrameError::BadMarker { offset }),
    }
}

/// Nesting the one-pass [`complete_len`] tracks on the stack; deeper values take
/// the resumable path.
const FAST_DEPTH: usize = 16;

fn be_at(bytes: &[u8], at: usize, n: usize) -> Option<usize> {
    usize::try_from(be(bytes.get(at..at + n)?)).ok()
}

/// Length of the value at the start of `bytes` when it is complete there and
/// within `limits`, in one tight pass over a slice that holds all of it. `None`
/// means "not that simple" (incomplete, too large or deep, byte 0xc1, or nested
/// past [`FAST_DEPTH`]): the resumable [`Framer`] then gives the exact answer.
/// A complete value passes the framer's size checks exactly when its length is
/// within `max_message_size` (each check bounds a prefix of it), so both agree.
pub fn complete_len(bytes: &[u8], limits: Limits) -> Option<usize> {
    let max_depth = limits.max_depth.min(FAST_DEPTH);
    let n = bytes.len();
    // Values left in each enclosing array/map, and in the innermost one (the
    // root counts as a container of one).
    let mut outer = [0usize; FAST_DEPTH];
    let mut depth = 0usize;
    let mut left = 1usize;
    let mut pos = 0usize;
    loop {
        let b = *bytes.get(pos)?;
        let mut items = 0usize;
        // The value's length (a container's: its header's). The commonest
        // markers (fixstr, fixint, nil, boolean, fixmap, fixarray) are told
        // apart by compares before the table: those branches are well
        // predicted where the table's indirect jump is not.
        let len = if b & 0xe0 == 0xa0 {
            1 + usize::from(b & 0x1f)
        } else if !(0x80..0xe0).contains(&b) || b == 0xc0 || b == 0xc2 || b == 0xc3 {
            1
        } else if b & 0xe0 == 0x80 {
            // fixmap (0x8_: twice its entries) or fixarray (0x9_)
            items = usize::from(b & 0x0f) << usize::from(b & 0x10 == 0);
            1
        } else {
            match b {
                0xc4 | 0xd9 => 2 + be_at(bytes, pos + 1, 1)?,
                0xc5 | 0xda => 3 + be_at(bytes, pos + 1, 2)?,
                0xc6 | 0xdb => 5usize.checked_add(be_at(bytes, pos + 1, 4)?)?,
                0xc7 => 3 + be_at(bytes, pos + 1, 1)?,
                0xc8 => 4 + be_at(bytes, pos + 1, 2)?,
                0xc9 => 6usize.checked_add(be_at(bytes, pos + 1, 4)?)?,
                0xcc | 0xd0 => 2,
                0xcd | 0xd1 => 3,
                0xca | 0xce | 0xd2 => 5,
                0xcb | 0xcf | 0xd3 => 9,
                0xd4 => 3,
                0xd5 => 4,
                0xd6 => 6,
                0xd7 => 10,
                0xd8 => 18,
                0xdc => {
                    items = be_at(bytes, pos + 1, 2)?;
                    3
                }
                0xdd => {
                    items = be_at(bytes, pos + 1, 4)?;
                    5
                }
                0xde => {
                    items = 2 * be_at(bytes, pos + 1, 2)?;
                    3
                }
                0xdf => {
                    items = be_at(bytes, pos + 1, 4)?.checked_mul(2)?;
                    5
                }
                // 0xc1, which MessagePack never uses (the markers handled
                // above do not get here).
                _ => return None,
            }
        };
        pos = pos.checked_add(len)?;
        if pos > n {
            return None;
        }
        left -= 1;
        if items > 0 {
            // Each item takes a byte at least.
            if items > n - pos || depth >= max_depth {
                return None;
            }
            outer[depth] = left;
            depth += 1;
            left = items;
            continue;
        }
        while left == 0 {
            if depth == 0 {
                return (pos <= limits.max_message_size).then_some(pos);
            }
            depth -= 1;
            left = outer[depth];
        }
    }
}

/// Resumable scanner of one message at a time.
#[derive(Debug)]
pub struct Framer {
    limits: Limits,
    /// Bytes of the current message scanned so far.
    pos: usize,
    /// Payload bytes still to pass over.
    skip: u64,
    /// Items left in each open array/map, innermost last.
    open: Vec<u64>,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            pos: 0,
            skip: 0,
            open: Vec::with_capacity(limits.max_depth.min(64)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether no message is partly scanned (the next byte starts one).
    pub fn at_start(&self) -> bool {
        self.pos == 0 && self.skip == 0 && self.open.is_empty()
    }

    /// Forgets any partly scanned message.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.skip = 0;
        self.open.clear();
    }

    fn check_size(&self, at_least: u64) -> Result<(), FrameError> {
        if at_least > self.limits.max_message_size as u64 {
            return Err(FrameError::TooLarge {
                at_least,
                max: self.limits.max_message_size,
            });
        }
        Ok(())
    }

    /// One value ended: count it against the open containers. True when the
    /// outermost value (the message) is complete.
    fn value_done(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }

    /// Scans `buf`, the bytes of the current message from its first byte (more of
    /// them on each call). Returns the message length once it is complete, after
    /// which the framer is ready for the next message.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if self.at_start() {
            // Most messages arrive whole: one tight pass; anything else (a
            // partial message, an error to report) takes the resumable path.
            if let Some(n) = complete_len(buf, self.limits) {
                return Ok(Some(n));
            }
        }
        self.scan_resumable(buf)
    }

    /// [`Framer::scan`] one marker at a time, from wherever the last call stopped.
    fn scan_resumable(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        loop {
            if self.skip > 0 {
                let avail = (buf.len() - self.pos) as u64;
                if avail < self.skip {
                    self.pos = buf.len();
                    self.skip -= avail;
                    return Ok(None);
                }
                self.pos += self.skip as usize;
                self.skip = 0;
                if self.value_done() {
                    return Ok(Some(self.finish()));
                }
                continue;
            }
            if self.pos >= buf.len() {
                return Ok(None);
            }
            let Some(h) = head(&buf[self.pos..], self.pos)? else {
                return Ok(None);
            };
            let end = self.pos as u64 + h.len as u64;
            match h.items {
                Some(items) => {
                    // Every item takes at least one byte: a count that cannot fit fails now.
                    self.check_size(end + items)?;
                    self.pos += h.len;
                    if items == 0 {
                        if self.value_done() {
                            return Ok(Some(self.finish()));
                        }
                    } else {
                        if self.open.len() >= self.limits.max_depth {
                            return Err(FrameError::TooDeep {
                                max: self.limits.max_depth,
                            });
                        }
                        self.open.push(items);
                    }
                }
                None => {
                    self.check_size(end + h.payload)?;
                    self.pos += h.len;
                    self.skip = h.payload;
                    if self.skip == 0 && self.value_done() {
                        return Ok(Some(self.finish()));
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> usize {
        let len = self.pos;
        self.reset();
        len
    }
}

/// Length of the complete value at the start of `bytes` (one-shot use of a framer).
pub fn value_len(framer: &mut Framer, bytes: &[u8]) -> Result<usize, String> {
    framer.reset();
    match framer.scan(bytes) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => {
            framer.reset();
            Err("truncated MessagePack value".into())
        }
        Err(e) => {
            framer.reset();
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_message_size: usize, max_depth: usize) -> Limits {
        Limits {
            max_message_size,
            max_depth,
        }
    }

    fn pack<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).unwrap()
    }

    #[test]
    fn finds_the_end_of_every_value_kind() {
        let mut values: Vec<Vec<u8>> = vec![
            pack(&()),
            pack(&true),
            pack(&5u8),
            pack(&-5i8),
            pack(&200u8),
            pack(&-200i16),
            pack(&70000u32),
            pack(&-70000i32),
            pack(&u64::MAX),
            pack(&i64::MIN),
            pack(&1.5f32),
            pack(&1.5f64),
            pack(&"abc"),
            pack(&"x".repeat(40)),
            pack(&"x".repeat(300)),
            pack(&"x".repeat(70000)),
            pack(&vec![1, 2, 3]),
            pack(&vec![0u8; 20]),
            pack(&std::collections::BTreeMap::from([
                ("a", vec![1]),
                ("b", vec![]),
            ])),
        ];
        for n in [1usize, 2, 4, 8, 16, 3, 300] {
            let mut v = Vec::new();
            rmp::encode::write_ext_meta(&mut v, n as u32, 7).unwrap();
            v.extend(std::iter::repeat_n(9u8, n));
            values.push(v);
        }
        let mut bin = Vec::new();
        rmp::encode::write_bin(&mut bin, &[1, 2, 3]).unwrap();
        values.push(bin);
        for v in values {
            let mut f = Framer::new(Limits::default());
            let mut with_tail = v.clone();
            with_tail.extend_from_slice(&[0xc0, 0xc0]);
            assert_eq!(f.scan(&with_tail), Ok(Some(v.len())), "{v:02x?}");
            // Every proper prefix is incomplete, scanned in one go or byte by byte.
            for cut in 0..v.len() {
                assert_eq!(Framer::new(Limits::default()).scan(&v[..cut]), Ok(None));
            }
            let mut f = Framer::new(Limits::default());
            for cut in 0..v.len() {
                assert_eq!(f.scan(&v[..cut]), Ok(None));
            }
            assert_eq!(f.scan(&v), Ok(Some(v.len())));
        }
    }

    #[test]
    fn a_declared_length_beyond_the_limit_fails_before_the_bytes_arrive() {
        // str32 announcing 1 GiB, only the header present.
        let hdr = [0xdb, 0x40, 0, 0, 0];
        let err = Framer::new(limits(1024, 8)).scan(&hdr).unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                at_least: 5 + (1 << 30),
                max: 1024
            }
        );
        assert_eq!(
            err.to_string(),
            "message of at least 1073741829 bytes exceeds max_message_size (1024)"
        );
        // array32 announcing 2^32-1 items.
        let hdr = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Framer::new(limits(1024, 8)).scan(&hdr),
            Err(FrameError::TooLarge { .. })
        ));
        // A message exactly at the limit passes.
        let v = pack(&"x".repeat(100));
        assert_eq!(Framer::new(limits(v.len(), 8)).scan(&v), Ok(Some(v.len())));
        assert!(Framer::new(limits(v.len() - 1, 8)).scan(&v).is_err());
    }

    #[test]
    fn nesting_beyond_the_limit_fails() {
        let deep = [0x91u8; 10]; // [[[[...
        assert_eq!(
            Framer::new(limits(1024, 4)).scan(&deep),
            Err(FrameError::TooDeep { max: 4 })
        );
        let ok = [0x91, 0x91, 0x91, 0x90];
        assert_eq!(Framer::new(limits(1024, 3)).scan(&ok), Ok(Some(4)));
    }

    /// A value of random shape, encoded (xorshift-driven, so the test is repeatable).
    fn random_value(rng: &mut u64, depth: usize, out: &mut Vec<u8>) {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let pick = next() % if depth > 6 { 10 } else { 14 };
        let n = (next() % 40) as usize;
        match pick {
            0 => out.push(0xc0),
            1 => rmp::encode::write_sint(out, next() as i64 >> (next() % 64))
                .map(drop)
                .unwrap(),
            2 => rmp::encode::write_f64(out, 1.5).unwrap(),
            3 => rmp::encode::write_f32(out, 2.5).unwrap(),
            4 => rmp::encode::write_str(out, &"s".repeat(n * (1 + n % 9))).unwrap(),
            5 => rmp::encode::write_bin(out, &vec![7u8; n * 3]).unwrap(),
            6 => {
                rmp::encode::write_ext_meta(out, n as u32 % 20, 1).unwrap();
                out.extend(std::iter::repeat_n(1u8, n % 20));
            }
            7 => rmp::encode::write_uint(out, next()).map(drop).unwrap(),
            8 => out.push(0xc3),
            9 => rmp::encode::write_array_len(out, 0).map(drop).unwrap(),
            10 | 11 => {
                let k = (n % 5) as u32 + if n.is_multiple_of(7) { 20 } else { 0 };
                rmp::encode::write_array_len(out, k).map(drop).unwrap();
                for _ in 0..k {
                    random_value(rng, depth + 1, out);
                }
            }
            _ => {
                let k = (n % 4) as u32 + if n.is_multiple_of(9) { 17 } else { 0 };
                rmp::encode::write_map_len(out, k).map(drop).unwrap();
                for _ in 0..2 * k {
                    random_value(rng, depth + 1, out);
                }
            }
        }
    }

    #[test]
    fn the_one_pass_length_agrees_with_the_resumable_scan() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let (mut whole, mut not) = (0, 0);
        for round in 0..3000 {
            let mut v = Vec::new();
            random_value(&mut rng, 0, &mut v);
            // Whole, with a tail, cut short, and with one byte changed.
            let mut cases = vec![v.clone(), [&v[..], &[0xc0, 0x01]].concat()];
            cases.push(v[..v.len() * (round % 7) / 7].to_vec());
            let mut bad = v.clone();
            bad[round % v.len()] = [0xc1, 0xdd, 0xff, 0x9f, 0xdf][round % 5];
            cases.push(bad);
            for bytes in cases {
                for lim in [
                    limits(1 << 20, 8),
                    limits(1 << 20, 2),
                    limits(v.len(), FAST_DEPTH),
                    limits(5, FAST_DEPTH),
                ] {
                    let slow = Framer::new(lim).scan_resumable(&bytes);
                    assert_eq!(
                        complete_len(&bytes, lim),
                        slow.clone().ok().flatten(),
                        "{bytes:02x?} {lim:?}"
                    );
                    assert_eq!(Framer::new(lim).scan(&bytes), slow);
                    if matches!(slow, Ok(Some(_))) {
                        whole += 1;
                    } else {
                        not += 1;
                    }
                }
            }
        }
        // Both outcomes are well represented.
        assert!(whole > 8000 && not > 8000, "{whole} complete, {not} not");
        // Nesting past the one-pass bound is left to the resumable scan.
        let deep = [[0x91u8; 40].as_slice(), &[0xc0]].concat();
        assert_eq!(complete_len(&deep, limits(1024, 64)), None);
        assert_eq!(Framer::new(limits(1024, 64)).scan(&deep), Ok(Some(41)));
    }

    #[test]
    fn reserved_marker_is_an_error() {
        let err = Framer::new(Limits::default())
            .scan(&[0x92, 0x01, 0xc1])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed MessagePack: invalid byte 0xc1 at offset 2"
        );
    }
}
