//! The helper's line protocol escaping, shared with the supervisor (`src/process`
//! includes this file): fields are TAB-separated, messages end with a newline.

/// Makes `s` safe as one field: `\\`, TAB and newline are escaped; CR is dropped;
/// invalid UTF-8 is replaced.
pub fn escape(s: &[u8]) -> String {
    let text = String::from_utf8_lossy(s);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`].
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_separators() {
        let s = "a\tb\\c\nd";
        assert_eq!(unescape(&escape(s.as_bytes())), s);
        assert!(!escape(s.as_bytes()).contains('\t'));
        assert!(!escape(s.as_bytes()).contains('\n'));
    }
}
