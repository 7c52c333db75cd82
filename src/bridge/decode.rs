//! MessagePack bytes → Lua value, built on the Lua stack (tables presized with
//! their declared sizes up to `stack::MAX_PRESIZE`: a header is a hint, not an
//! allocation a server can demand).
//!
//! str and bin both become Lua strings (binary-safe); integers and floats become
//! Lua numbers (an incoming whole float is that number); nil inside an array
//! leaves a hole (the caller gets the array length separately); a map key that is
//! nil or NaN, an extension type, nesting deeper than [`MAX_DEPTH`], truncated or
//! trailing bytes are errors. Declared lengths are checked against the bytes left
//! before any table is sized, so a lying header cannot make it allocate.

use rmp::Marker;
use rmp::decode::{self, RmpRead};

use super::encode::MAX_DEPTH;
use super::stack::{Overflow, Stack};

type Res<T> = Result<T, String>;

fn truncated<E>(_: E) -> String {
    "truncated MessagePack value".to_string()
}

fn overflow(e: Overflow) -> String {
    e.to_string()
}

/// What [`value`] pushed, as far as its caller needs to know.
#[derive(Clone, Copy, PartialEq)]
enum Pushed {
    /// An array of this many items (some may be holes).
    Array(usize),
    Nil,
    /// A NaN (not allowed as a map key).
    NaN,
    Other,
}

/// Stack slots a table under construction needs above itself: a key and a value
/// (a nested table makes its own check before it is pushed).
const ENTRY_SLOTS: i32 = 2;

/// Nesting covered by the one stack check at the start: a table at depth `d`
/// (1-based) has at most `2d + 1` slots in use above the base (the tables and
/// keys above it, itself and its entry), so real values need no check per table.
const CHECKED_DEPTH: usize = 16;

/// Decodes the one value in `bytes` and pushes it. Returns its length when it
/// is an array.
pub fn decode(s: &Stack, bytes: &[u8]) -> Res<Option<usize>> {
    let mut rd = bytes;
    s.check(1 + ENTRY_SLOTS * CHECKED_DEPTH as i32)
        .map_err(overflow)?;
    let pushed = value(s, &mut rd, 0)?;
    if !rd.is_empty() {
        return Err(format!("{} bytes after the MessagePack value", rd.len()));
    }
    Ok(match pushed {
        Pushed::Array(n) => Some(n),
        _ => None,
    })
}

fn bytes<'a>(rd: &mut &'a [u8], len: usize) -> Res<&'a [u8]> {
    let b = rd.get(..len).ok_or_else(|| truncated(()))?;
    *rd = &rd[len..];
    Ok(b)
}

fn count(rd: &[u8], n: usize, per_item: usize) -> Res<usize> {
    // Each item takes at least one byte.
    if n.saturating_mul(per_item) > rd.len() {
        return Err(truncated(()));
    }
    Ok(n)
}

/// Pushes exactly one value (on success). The caller made room for one slot.
fn value(s: &Stack, rd: &mut &[u8], depth: usize) -> Res<Pushed> {
    let marker = decode::read_marker(rd).map_err(truncated)?;
    // SAFETY (every push below): the caller's check covers this one slot.
    let num = |n: f64| unsafe { s.push_num_unchecked(n) };
    match marker {
        Marker::Null => {
            unsafe { s.push_nil_unchecked() };
            return Ok(Pushed::Nil);
        }
        Marker::True => unsafe { s.push_bool_unchecked(true) },
        Marker::False => unsafe { s.push_bool_unchecked(false) },
        Marker::FixPos(n) => num(f64::from(n)),
        Marker::FixNeg(n) => num(f64::from(n)),
        Marker::U8 => num(f64::from(rd.read_data_u8().map_err(truncated)?)),
        Marker::U16 => num(f64::from(rd.read_data_u16().map_err(truncated)?)),
        Marker::U32 => num(f64::from(rd.read_data_u32().map_err(truncated)?)),
        Marker::U64 => num(rd.read_data_u64().map_err(truncated)? as f64),
        Marker::I8 => num(f64::from(rd.read_data_i8().map_err(truncated)?)),
        Marker::I16 => num(f64::from(rd.read_data_i16().map_err(truncated)?)),
        Marker::I32 => num(f64::from(rd.read_data_i32().map_err(truncated)?)),
        Marker::I64 => num(rd.read_data_i64().map_err(truncated)? as f64),
        Marker::F32 => return float(s, f64::from(rd.read_data_f32().map_err(truncated)?)),
        Marker::F64 => return float(s, rd.read_data_f64().map_err(truncated)?),
        Marker::FixStr(n) => string(s, rd, usize::from(n))?,
        Marker::Str8 | Marker::Bin8 => {
            let n = rd.read_data_u8().map_err(truncated)?;
            string(s, rd, usize::from(n))?
        }
        Marker::Str16 | Marker::Bin16 => {
            let n = rd.read_data_u16().map_err(truncated)?;
            string(s, rd, usize::from(n))?
        }
        Marker::Str32 | Marker::Bin32 => {
            let n = rd.read_data_u32().map_err(truncated)?;
            string(s, rd, n as usize)?
        }
        Marker::FixArray(n) => return array(s, rd, usize::from(n), depth),
        Marker::Array16 => {
            let n = rd.read_data_u16().map_err(truncated)?;
            return array(s, rd, usize::from(n), depth);
        }
        Marker::Array32 => {
            let n = rd.read_data_u32().map_err(truncated)?;
            return array(s, rd, n as usize, depth);
        }
        Marker::FixMap(n) => map(s, rd, usize::from(n), depth)?,
        Marker::Map16 => {
            let n = rd.read_data_u16().map_err(truncated)?;
            map(s, rd, usize::from(n), depth)?
        }
        Marker::Map32 => {
            let n = rd.read_data_u32().map_err(truncated)?;
            map(s, rd, n as usize, depth)?
        }
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16
        | Marker::Ext8
        | Marker::Ext16
        | Marker::Ext32 => return Err("MessagePack extension types are not supported".into()),
        Marker::Reserved => return Err("malformed MessagePack: invalid byte 0xc1".into()),
    }
    Ok(Pushed::Other)
}

fn float(s: &Stack, n: f64) -> Res<Pushed> {
    // SAFETY: the caller of `value` made room for one slot.
    unsafe { s.push_num_unchecked(n) };
    Ok(if n.is_nan() {
        Pushed::NaN
    } else {
        Pushed::Other
    })
}

fn string(s: &Stack, rd: &mut &[u8], n: usize) -> Res<()> {
    let b = bytes(rd, n)?;
    // SAFETY: the caller of `value` made room for one slot; `b` is part of the
    // bytes argument, which stays in its slot for the whole call.
    unsafe { s.push_str_unchecked(b) };
    Ok(())
}

fn deeper(depth: usize) -> Res<usize> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "MessagePack value nested deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(depth + 1)
}

/// Pushes a table (at `depth`) and makes room for its entries. On an error the
/// caller's entry point resets the stack, so a partly built table is simply dropped.
fn table(s: &Stack, narr: usize, nrec: usize, depth: usize) -> Res<()> {
    // SAFETY: the caller of `value` made room for the table's slot.
    unsafe { s.new_table_unchecked(narr, nrec) };
    if depth > CHECKED_DEPTH {
        s.check(ENTRY_SLOTS).map_err(overflow)?;
    }
    Ok(())
}

fn array(s: &Stack, rd: &mut &[u8], n: usize, depth: usize) -> Res<Pushed> {
    let depth = deeper(depth)?;
    let n = count(rd, n, 1)?;
    let last = i32::try_from(n).map_err(|_| truncated(()))?;
    table(s, n, 0, depth)?;
    for i in 1..=last {
        value(s, rd, depth)?;
        // SAFETY: `value` pushed one value right above the table (a nil leaves
        // a hole); the table's check covered it.
        unsafe { s.set_item_unchecked(i) };
    }
    Ok(Pushed::Array(n))
}

fn map(s: &Stack, rd: &mut &[u8], n: usize, depth: usize) -> Res<()> {
    let depth = deeper(depth)?;
    let n = count(rd, n, 2)?;
    table(s, 0, n, depth)?;
    for _ in 0..n {
        let key = value(s, rd, depth)?;
        let val = value(s, rd, depth)?;
        match key {
            Pushed::Nil => return Err("MessagePack map key is nil".into()),
            Pushed::NaN => return Err("MessagePack map key is NaN".into()),
            _ => {}
        }
        if val == Pushed::Nil {
            // SAFETY: the key and the value were just pushed.
            unsafe { s.pop_unchecked(2) };
        } else {
            // SAFETY: key (not nil/NaN, checked above) and non-nil value right
            // above the table; the table's check covered both.
            unsafe { s.set_pair_unchecked() };
        }
    }
    Ok(())
}
