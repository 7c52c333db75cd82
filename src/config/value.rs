//! A setting's raw value and the typed readers that check it. Kong's conf loader
//! hands dynamic `pluginserver_*` keys over as strings, but a caller may also pass
//! numbers, booleans or (for `pluginserver_names`) arrays.

use std::fmt;

/// Upper bound for durations and sizes: nginx keeps timeouts in a C `int` of
/// milliseconds, and a LuaJIT string cannot reach 2 GiB.
pub const MAX_INT_SETTING: u64 = i32::MAX as u64;

/// One raw setting value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    Bool(bool),
    List(Vec<Value>),
    /// Anything else (a Lua table with keys, a function...), by type name.
    Other(String),
}

impl fmt::Display for Value {
    /// How a value is quoted in an error message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => write!(f, "'{s}'"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::List(items) => {
                let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", parts.join(", "))
            }
            Value::Other(kind) => write!(f, "a {kind}"),
        }
    }
}

/// Why a value was refused: the expectation, completed by the caller with key and value.
pub type Expected = String;

/// A positive whole number no larger than [`MAX_INT_SETTING`]: `"1000"` or `1000`;
/// `unit` names what it counts in the expectation.
pub fn positive_int(value: &Value, unit: &str) -> Result<u64, Expected> {
    let expected = || format!("a positive integer of {unit} (1..{MAX_INT_SETTING})");
    let n = match value {
        Value::Text(s) => {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(expected());
            }
            // All digits: only overflow can fail, which is out of range anyway.
            s.parse::<u64>().unwrap_or(u64::MAX)
        }
        Value::Number(n) if n.is_finite() && n.fract() == 0.0 && *n >= 0.0 => {
            if *n > MAX_INT_SETTING as f64 {
                u64::MAX
            } else {
                *n as u64
            }
        }
        _ => return Err(expected()),
    };
    if n == 0 || n > MAX_INT_SETTING {
        return Err(expected());
    }
    Ok(n)
}

/// Like [`positive_int`], but `0` is accepted too (it turns a feature off).
pub fn int_or_off(value: &Value, unit: &str) -> Result<u64, Expected> {
    let is_zero = match value {
        Value::Text(s) => {
            let s = s.trim();
            !s.is_empty() && s.bytes().all(|b| b == b'0')
        }
        Value::Number(n) => *n == 0.0,
        _ => false,
    };
    if is_zero {
        return Ok(0);
    }
    positive_int(value, unit)
        .map_err(|_| format!("a positive integer of {unit} (1..{MAX_INT_SETTING}), or 0 for off"))
}

/// A Kong boolean: `on`/`off`/`true`/`false` (any case) or a real boolean.
pub fn boolean(value: &Value) -> Result<bool, Expected> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            _ => Err("a boolean (on, off, true or false)".into()),
        },
        _ => Err("a boolean (on, off, true or false)".into()),
    }
}

/// A non-empty string (surrounding blanks removed, as Kong's conf loader does)
/// without NUL bytes: paths and commands become C strings, which end at the first
/// NUL (a socket path would be cut short, a command would fail to start).
pub fn text(value: &Value, what: &str) -> Result<String, Expected> {
    match value {
        Value::Text(s) if s.contains('\0') => Err(format!("a {what} without NUL bytes")),
        Value::Text(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(format!("a non-empty {what}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positive_int_ms(v: &Value) -> Result<u64, Expected> {
        positive_int(v, "milliseconds")
    }

    #[test]
    fn positive_int_names_its_unit_and_range() {
        assert_eq!(
            positive_int(&t("x"), "bytes"),
            Err("a positive integer of bytes (1..2147483647)".into())
        );
    }

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn positive_int_accepts_digits_and_whole_numbers() {
        assert_eq!(positive_int_ms(&t("1000")), Ok(1000));
        assert_eq!(positive_int_ms(&t(" 25 ")), Ok(25));
        assert_eq!(positive_int_ms(&Value::Number(60000.0)), Ok(60000));
        assert_eq!(positive_int_ms(&t("2147483647")), Ok(2147483647));
    }

    #[test]
    fn positive_int_rejects_zero_negative_fractions_words_and_overflow() {
        for bad in [
            t("0"),
            t("-5"),
            t("1.5"),
            t("1e3"),
            t("10s"),
            t(""),
            t("2147483648"),
            t("99999999999999999999999"),
            Value::Number(0.0),
            Value::Number(-1.0),
            Value::Number(2.5),
            Value::Number(f64::INFINITY),
            Value::Number(f64::NAN),
            Value::Bool(true),
            Value::List(vec![]),
        ] {
            assert!(positive_int_ms(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn int_or_off_accepts_zero_and_names_it_in_the_expectation() {
        assert_eq!(int_or_off(&t("0"), "milliseconds"), Ok(0));
        assert_eq!(int_or_off(&t(" 00 "), "milliseconds"), Ok(0));
        assert_eq!(int_or_off(&Value::Number(0.0), "milliseconds"), Ok(0));
        assert_eq!(int_or_off(&t("5000"), "milliseconds"), Ok(5000));
        for bad in [t("-1"), t("1.5"), t("off"), t(""), Value::Bool(false)] {
            assert_eq!(
                int_or_off(&bad, "milliseconds"),
                Err("a positive integer of milliseconds (1..2147483647), or 0 for off".into()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn boolean_accepts_kong_words_in_any_case() {
        assert_eq!(boolean(&t("on")), Ok(true));
        assert_eq!(boolean(&t("TRUE")), Ok(true));
        assert_eq!(boolean(&t("off")), Ok(false));
        assert_eq!(boolean(&t("false")), Ok(false));
        assert_eq!(boolean(&Value::Bool(true)), Ok(true));
    }

    #[test]
    fn boolean_rejects_other_words_and_numbers() {
        for bad in [t("yes"), t("1"), t(""), Value::Number(1.0)] {
            assert!(boolean(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn text_trims_and_rejects_empty_and_non_strings() {
        assert_eq!(text(&t("  a b "), "path"), Ok("a b".into()));
        assert!(text(&t("   "), "path").is_err());
        assert!(text(&Value::Number(3.0), "path").is_err());
    }

    #[test]
    fn text_rejects_nul_bytes() {
        // Found by the `config` fuzz target (fuzz/corpus/config/regress-nul-in-query-cmd).
        assert_eq!(
            text(&t("/bin/go\0-hello -dump"), "command line"),
            Err("a command line without NUL bytes".into())
        );
    }

    #[test]
    fn display_quotes_strings_and_names_other_kinds() {
        assert_eq!(t("x").to_string(), "'x'");
        assert_eq!(Value::Number(1.5).to_string(), "1.5");
        assert_eq!(Value::Other("function".into()).to_string(), "a function");
        assert_eq!(
            Value::List(vec![t("a"), Value::Bool(false)]).to_string(),
            "['a', false]"
        );
    }
}
