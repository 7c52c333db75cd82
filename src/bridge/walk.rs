//! Walking Lua values, shared by the MessagePack and Protobuf encoders: how a
//! table is classified (array, map, empty), cycles and nesting depth, the number
//! rule, what counts as null, and errors that name where in the value they
//! happened. Each encoder only decides how to write what the walk finds.
//! Values are read in place on the Lua stack ([`super::stack`]).

use super::stack::{Overflow, Stack, Table, Val};

/// Deepest table nesting a value may have.
pub const MAX_DEPTH: usize = 100;

/// Largest number sent as an integer (2^53: every whole number up to it is exact).
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// An encoding failure and where it happened (keys from the root).
#[derive(Debug)]
pub struct EncodeError {
    msg: String,
    path: Vec<String>,
}

impl EncodeError {
    pub fn new(msg: impl Into<String>) -> Self {
        EncodeError {
            msg: msg.into(),
            path: Vec::new(),
        }
    }

    /// Adds one level (the key under which the failure happened).
    pub fn at(mut self, key: Val<'_>) -> Self {
        self.path.push(key_text(key));
        self
    }

    /// Adds one level named by a message field.
    pub fn at_field(mut self, field: &str) -> Self {
        self.path.push(field.to_owned());
        self
    }
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            return f.write_str(&self.msg);
        }
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        write!(f, "{} (at {})", self.msg, path.join("."))
    }
}

impl From<Overflow> for EncodeError {
    fn from(e: Overflow) -> Self {
        EncodeError::new(e.to_string())
    }
}

impl From<String> for EncodeError {
    fn from(msg: String) -> Self {
        EncodeError::new(msg)
    }
}

fn key_text(key: Val<'_>) -> String {
    match key {
        Val::Str(s) => String::from_utf8_lossy(s).into_owned(),
        // Rust prints whole floats without a fraction: `[2]`, like an integer.
        Val::Num(n) => format!("[{n}]"),
        other => format!("[{}]", other.type_name()),
    }
}

/// nil, or the NULL lightuserdata of `cjson.null`/`ngx.null`.
pub fn is_null(v: Val<'_>) -> bool {
    match v {
        Val::Nil => true,
        Val::Light(p) => p.is_null(),
        _ => false,
    }
}

/// A Lua number as an integer when it is whole, finite and |x| ≤ 2^53
/// (docs/DESIGN.md "Numbers"); `None` means "send it as a float".
pub fn whole(n: f64) -> Option<i64> {
    (n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_EXACT).then_some(n as i64)
}

/// How a table is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Empty,
    /// Keys exactly 1..n.
    Array(usize),
    /// Any other keys; the number of entries.
    Map(usize),
}

/// Counts the entries of `t` and tells an array (keys exactly 1..n) from a map.
pub fn layout(s: &Stack, t: Table<'_>) -> Result<Layout, EncodeError> {
    let n = s.raw_len(t);
    let mut count = 0usize;
    let mut sequence = true;
    s.each_key(t, |k| {
        count += 1;
        if sequence {
            sequence = matches!(k, Val::Num(x) if x.fract() == 0.0 && x >= 1.0 && x <= n as f64);
        }
        Ok::<_, EncodeError>(())
    })?;
    Ok(match count {
        0 => Layout::Empty,
        _ if sequence && count == n => Layout::Array(count),
        _ => Layout::Map(count),
    })
}

/// Levels [`Guard`] holds without the heap (real values rarely nest deeper).
const INLINE_LEVELS: usize = 8;

/// The tables on the way from the root: finds cycles and bounds the depth. The
/// first levels live in an inline array, so encoding a value allocates nothing.
pub struct Guard {
    inline: [*const std::ffi::c_void; INLINE_LEVELS],
    len: usize,
    deeper: Vec<*const std::ffi::c_void>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            inline: [std::ptr::null(); INLINE_LEVELS],
            len: 0,
            deeper: Vec::new(),
        }
    }
}

impl Guard {
    /// Call before walking into `t`; pair with [`Guard::leave`].
    pub fn enter(&mut self, s: &Stack, t: Table<'_>) -> Result<(), EncodeError> {
        let p = s.pointer(t);
        let held = self.len.min(INLINE_LEVELS);
        if self.inline[..held].contains(&p) || self.deeper.contains(&p) {
            return Err(EncodeError::new("cannot encode a cyclic table"));
        }
        if self.len >= MAX_DEPTH {
            return Err(EncodeError::new(format!(
                "cannot encode tables nested deeper than {MAX_DEPTH} levels"
            )));
        }
        if self.len < INLINE_LEVELS {
            self.inline[self.len] = p;
        } else {
            self.deeper.push(p);
        }
        self.len += 1;
        Ok(())
    }

    pub fn leave(&mut self) {
        self.len -= 1;
        if self.len >= INLINE_LEVELS {
            self.deeper.pop();
        }
    }
}

/// Calls `f(value)` for t[1..=n]; a failure names the index.
pub fn each_item(
    s: &Stack,
    t: Table<'_>,
    n: usize,
    mut f: impl for<'v> FnMut(Val<'v>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    for i in 1..=n {
        s.item(t, i, &mut f)?
            .map_err(|e| e.at(Val::Num(i as f64)))?;
    }
    Ok(())
}

/// Calls `f(key, value)` for every entry; a failure names the key.
pub fn each_pair(
    s: &Stack,
    t: Table<'_>,
    f: impl for<'v> FnMut(Val<'v>, Val<'v>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    s.each_pair(t, f, |e, k| e.at(k))
}

/// The error for a value no encoder can represent.
pub fn unsupported(v: Val<'_>) -> EncodeError {
    EncodeError::new(format!("cannot encode a {} value", v.type_name()))
}
