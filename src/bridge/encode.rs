//! Lua value → MessagePack bytes, walking tables directly (no serde detour).
//!
//! Rules (Kong's encoder, docs/PROTOCOL.md §4, with the number rule of docs/DESIGN.md):
//! nil and `cjson.null`/`ngx.null` (a NULL lightuserdata) → nil; a whole finite
//! number with |x| ≤ 2^53 → the smallest integer form, any other number → float64;
//! a string → str (bin where the method's [`Shape`] says raw body); a table whose
//! keys are exactly 1..n (n ≥ 1) → array, any other non-empty table → map, an empty
//! table → empty array (empty map where the shape is a multimap). Functions,
//! threads, userdata and cdata cannot be encoded; nor can cyclic or too-deep tables.

use rmp::encode;

use super::stack::{Stack, Table, Val};
use super::walk::{self, EncodeError, Guard, Layout};
use crate::codec::methods::Shape;
use crate::codec::msgpack::write::put_str;

pub use super::walk::MAX_DEPTH;

type Res = Result<(), EncodeError>;

/// Bytes of a map32 header, the longest map header.
const MAP_HEADER_MAX: usize = 5;

fn put<T, E: std::fmt::Debug>(r: Result<T, E>) {
    // Writing into a Vec cannot fail.
    r.expect("writing to a Vec");
}

/// Encodes `value` into `out` (appending), shaped for a method whose result shape is `shape`.
pub fn encode(out: &mut Vec<u8>, shape: Shape, s: &Stack, value: Val<'_>) -> Result<(), String> {
    let mut walker = Walker {
        out,
        s,
        guard: Guard::default(),
    };
    let r = match (shape, value) {
        (Shape::MultiMap, Val::Table(t)) => walker.multimap(t),
        (Shape::RawBody, Val::Str(b)) => {
            put(encode::write_bin(walker.out, b));
            Ok(())
        }
        _ => walker.value(value),
    };
    r.map_err(|e| e.to_string())
}

struct Walker<'a> {
    out: &'a mut Vec<u8>,
    s: &'a Stack,
    guard: Guard,
}

impl Walker<'_> {
    fn number(&mut self, n: f64) {
        match walk::whole(n) {
            Some(i) => put(encode::write_sint(self.out, i)),
            None => put(encode::write_f64(self.out, n)),
        }
    }

    fn value(&mut self, v: Val<'_>) -> Res {
        match v {
            Val::Nil => put(encode::write_nil(self.out)),
            Val::Bool(b) => put(encode::write_bool(self.out, b)),
            Val::Num(n) => self.number(n),
            Val::Str(b) => put_str(self.out, b),
            Val::Light(p) if p.is_null() => put(encode::write_nil(self.out)),
            Val::Table(t) => return self.table(t),
            other => return Err(walk::unsupported(other)),
        }
        Ok(())
    }

    fn table(&mut self, t: Table<'_>) -> Res {
        let s = self.s;
        self.guard.enter(s, t)?;
        if s.raw_len(t) == 0 {
            // No t[1]: not an array, so a map (or, with no entries, an empty
            // array), written in one walk with the count patched in after.
            let at = self.begin_map();
            let mut count = 0usize;
            walk::each_pair(s, t, |k, v| {
                count += 1;
                self.value(k)?;
                self.value(v)
            })?;
            self.end_map(at, count, true);
        } else {
            match walk::layout(s, t)? {
                Layout::Empty => put(encode::write_array_len(self.out, 0)),
                Layout::Array(n) => {
                    put(encode::write_array_len(self.out, n as u32));
                    walk::each_item(s, t, n, |v| self.value(v))?;
                }
                Layout::Map(n) => {
                    put(encode::write_map_len(self.out, n as u32));
                    walk::each_pair(s, t, |k, v| {
                        self.value(k)?;
                        self.value(v)
                    })?;
                }
            }
        }
        self.guard.leave();
        Ok(())
    }

    /// Leaves room for the largest map header (map32) and returns where it starts.
    fn begin_map(&mut self) -> usize {
        let at = self.out.len();
        self.out.extend_from_slice(&[0; MAP_HEADER_MAX]);
        at
    }

    /// Writes the header of the map begun at `at` with `count` entries (an empty
    /// array instead when `count` is 0 and `empty_as_array`), moving the entries
    /// down when the header is shorter than the room left for it.
    fn end_map(&mut self, at: usize, count: usize, empty_as_array: bool) {
        let mut header = [0u8; MAP_HEADER_MAX];
        let mut w = &mut header[..];
        if count == 0 && empty_as_array {
            put(encode::write_array_len(&mut w, 0));
        } else {
            put(encode::write_map_len(&mut w, count as u32));
        }
        let len = MAP_HEADER_MAX - w.len();
        if len < MAP_HEADER_MAX {
            self.out.copy_within(at + MAP_HEADER_MAX.., at + len);
            self.out.truncate(self.out.len() - (MAP_HEADER_MAX - len));
        }
        self.out[at..at + len].copy_from_slice(&header[..len]);
    }

    /// Header/query maps as the PDKs expect them: always a map; a string value → a
    /// one-element array, `true` → an empty array, a table → its array.
    fn multimap(&mut self, t: Table<'_>) -> Res {
        let s = self.s;
        self.guard.enter(s, t)?;
        let at = self.begin_map();
        let mut count = 0usize;
        walk::each_pair(s, t, |k, v| {
            count += 1;
            self.value(k)?;
            match v {
                Val::Bool(true) => put(encode::write_array_len(self.out, 0)),
                Val::Str(b) => {
                    self.out.push(0x91); // a one-element array
                    put_str(self.out, b);
                }
                _ => self.value(v)?,
            }
            Ok(())
        })?;
        self.end_map(at, count, false);
        self.guard.leave();
        Ok(())
    }
}
