//! Lua value → MessagePack bytes, walking tables directly (no serde detour).
//!
//! Rules (Kong's encoder, PROTOCOL.md §4.1, with INTERFACES.md's number rule):
//! nil and `cjson.null`/`ngx.null` (a NULL lightuserdata) → nil; a whole finite
//! number with |x| ≤ 2^53 → the smallest integer form, any other number → float64;
//! a string → str (bin where the method's [`Shape`] says raw body); a table whose
//! keys are exactly 1..n (n ≥ 1) → array, any other non-empty table → map, an empty
//! table → empty array (empty map where the shape is a multimap). Functions,
//! threads, userdata and cdata cannot be encoded; nor can cyclic or too-deep tables.

use mlua::{Table, Value};
use rmp::encode;

use crate::codec::methods::Shape;

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
    fn new(msg: impl Into<String>) -> Self {
        EncodeError {
            msg: msg.into(),
            path: Vec::new(),
        }
    }

    fn at(mut self, key: &Value) -> Self {
        self.path.push(key_text(key));
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

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.to_string_lossy(),
        Value::Integer(i) => format!("[{i}]"),
        Value::Number(n) => format!("[{n}]"),
        other => format!("[{}]", other.type_name()),
    }
}

type Res = Result<(), EncodeError>;

fn put<T, E: std::fmt::Debug>(r: Result<T, E>) {
    // Writing into a Vec cannot fail.
    r.expect("writing to a Vec");
}

/// Encodes `value` into `out` (appending), shaped for a method whose result shape is `shape`.
pub fn encode(out: &mut Vec<u8>, shape: Shape, value: &Value) -> Result<(), String> {
    let mut walker = Walker {
        out,
        path: Vec::new(),
    };
    let r = match (shape, value) {
        (Shape::MultiMap, Value::Table(t)) => walker.multimap(t),
        (Shape::RawBody, Value::String(s)) => {
            let b = s.as_bytes();
            put(encode::write_bin(walker.out, &b));
            Ok(())
        }
        _ => walker.value(value),
    };
    r.map_err(|e| e.to_string())
}

struct Walker<'a> {
    out: &'a mut Vec<u8>,
    /// Tables on the way from the root, to find cycles.
    path: Vec<*const std::ffi::c_void>,
}

impl Walker<'_> {
    fn number(&mut self, n: f64) {
        if n.is_finite() && n.fract() == 0.0 && n.abs() <= MAX_EXACT {
            put(encode::write_sint(self.out, n as i64));
        } else {
            put(encode::write_f64(self.out, n));
        }
    }

    fn value(&mut self, v: &Value) -> Res {
        match v {
            Value::Nil => put(encode::write_nil(self.out)),
            Value::Boolean(b) => put(encode::write_bool(self.out, *b)),
            Value::Integer(i) => {
                // Only when the host uses integers; same rule as numbers.
                if (*i as f64).abs() <= MAX_EXACT {
                    put(encode::write_sint(self.out, *i));
                } else {
                    put(encode::write_f64(self.out, *i as f64));
                }
            }
            Value::Number(n) => self.number(*n),
            Value::String(s) => {
                let b = s.as_bytes();
                put(encode::write_str_len(self.out, b.len() as u32));
                self.out.extend_from_slice(&b);
            }
            Value::LightUserData(p) if p.0.is_null() => put(encode::write_nil(self.out)),
            Value::Table(t) => return self.table(t),
            other => {
                return Err(EncodeError::new(format!(
                    "cannot encode a {} value",
                    other.type_name()
                )));
            }
        }
        Ok(())
    }

    fn enter(&mut self, t: &Table) -> Res {
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

    /// Number of entries, and whether the keys are exactly 1..n.
    fn census(t: &Table) -> Result<(usize, bool), EncodeError> {
        let n = t.raw_len();
        let mut count = 0usize;
        let mut sequence = true;
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| EncodeError::new(e.to_string()))?;
            count += 1;
            if sequence {
                sequence = match k {
                    Value::Integer(i) => i >= 1 && (i as usize) <= n,
                    Value::Number(x) => x.fract() == 0.0 && x >= 1.0 && x <= n as f64,
                    _ => false,
                };
            }
        }
        Ok((count, sequence && count == n))
    }

    fn table(&mut self, t: &Table) -> Res {
        self.enter(t)?;
        let (count, is_array) = Self::census(t)?;
        if count == 0 {
            put(encode::write_array_len(self.out, 0));
        } else if is_array {
            put(encode::write_array_len(self.out, count as u32));
            for i in 1..=count {
                let v: Value = t.raw_get(i).map_err(|e| EncodeError::new(e.to_string()))?;
                self.value(&v)
                    .map_err(|e| e.at(&Value::Integer(i as i64)))?;
            }
        } else {
            put(encode::write_map_len(self.out, count as u32));
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| EncodeError::new(e.to_string()))?;
                self.value(&k).map_err(|e| e.at(&k))?;
                self.value(&v).map_err(|e| e.at(&k))?;
            }
        }
        self.path.pop();
        Ok(())
    }

    /// Header/query maps as the PDKs expect them: always a map; a string value → a
    /// one-element array, `true` → an empty array, a table → its array.
    fn multimap(&mut self, t: &Table) -> Res {
        self.enter(t)?;
        let (count, _) = Self::census(t)?;
        put(encode::write_map_len(self.out, count as u32));
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair.map_err(|e| EncodeError::new(e.to_string()))?;
            self.value(&k).map_err(|e| e.at(&k))?;
            match &v {
                Value::Boolean(true) => put(encode::write_array_len(self.out, 0)),
                Value::String(_) => {
                    put(encode::write_array_len(self.out, 1));
                    self.value(&v).map_err(|e| e.at(&k))?;
                }
                _ => self.value(&v).map_err(|e| e.at(&k))?,
            }
        }
        self.path.pop();
        Ok(())
    }
}
