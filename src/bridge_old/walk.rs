//! Walking Lua values, shared by the MessagePack and Protobuf encoders: how a
//! table is classified (array, map, empty), cycles and nesting depth, the number
//! rule, what counts as null, and errors that name where in the value they
//! happened. Each encoder only decides how to write what the walk finds.

use mlua::{Table, Value};

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
    pub fn at(mut self, key: &Value) -> Self {
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

impl From<mlua::Error> for EncodeError {
    fn from(e: mlua::Error) -> Self {
        EncodeError::new(e.to_string())
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.to_string_lossy(),
        Value::Integer(i) => format!("[{i}]"),
        Value::Number(n) => format!("[{n}]"),
        other => format!("[{}]", other.type_name()),
    }
}

/// nil, or the NULL lightuserdata of `cjson.null`/`ngx.null`.
pub fn is_null(v: &Value) -> bool {
    match v {
        Value::Nil => true,
        Value::LightUserData(p) => p.0.is_null(),
        _ => false,
    }
}

/// A Lua number as an integer when it is whole, finite and |x| ≤ 2^53
/// (INTERFACES.md "Numbers"); `None` means "send it as a float".
pub fn whole(n: f64) -> Option<i64> {
    (n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_EXACT).then_some(n as i64)
}

/// The value of a Lua number (mlua reports integers when the host uses them).
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    }
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
pub fn layout(t: &Table) -> Result<Layout, EncodeError> {
    let n = t.raw_len();
    let mut count = 0usize;
    let mut sequence = true;
    for pair in t.pairs::<Value, Value>() {
        let (k, _) = pair?;
        count += 1;
        if sequence {
            sequence = match k {
                Value::Integer(i) => i >= 1 && (i as usize) <= n,
                Value::Number(x) => x.fract() == 0.0 && x >= 1.0 && x <= n as f64,
                _ => false,
            };
        }
    }
    Ok(match count {
        0 => Layout::Empty,
        _ if sequence && count == n => Layout::Array(count),
        _ => Layout::Map(count),
    })
}

/// The tables on the way from the root: finds cycles and bounds the depth.
#[derive(Default)]
pub struct Guard {
    path: Vec<*const std::ffi::c_void>,
}

impl Guard {
    /// Call before walking into `t`; pair with [`Guard::leave`].
    pub fn enter(&mut self, t: &Table) -> Result<(), EncodeError> {
        let p = t.to_pointer();
        if self.path.contains(&p) {
            return Err(EncodeError::new("cannot encode a cyclic table"));
        }
        if self.path.len() >= MAX_DEPTH {
            return Err(EncodeError::new(format!(
                "cannot encode tables nested deeper than {MAX_DEPTH} levels"
            )));
        }
        self.path.push(p);
        Ok(())
    }

    pub fn leave(&mut self) {
        self.path.pop();
    }
}

/// Calls `f(i, value)` for i in 1..=n; a failure names the index.
pub fn each_item(
    t: &Table,
    n: usize,
    mut f: impl FnMut(&Value) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    for i in 1..=n {
        let v: Value = t.raw_get(i)?;
        f(&v).map_err(|e| e.at(&Value::Integer(i as i64)))?;
    }
    Ok(())
}

/// Calls `f(key, value)` for every entry; a failure names the key.
pub fn each_pair(
    t: &Table,
    mut f: impl FnMut(&Value, &Value) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        f(&k, &v).map_err(|e| e.at(&k))?;
    }
    Ok(())
}

/// The error for a value no encoder can represent.
pub fn unsupported(v: &Value) -> EncodeError {
    EncodeError::new(format!("cannot encode a {} value", v.type_name()))
}
