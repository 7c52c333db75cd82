//! `pluginserver_names`: the list of servers, normalised as Kong does (lower-cased;
//! settings key `pluginserver_<name with - as _>_`), and checked beyond Kong.

use super::value::Value;

/// One listed server: its name and the infix of its settings keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub key: String,
}

/// The settings key prefix of a (lower-cased) name.
pub fn key_of(name: &str) -> String {
    name.replace('-', "_")
}

/// The settings key prefix (`pluginserver_<k>_`) of a `pluginserver_names` entry as
/// given: trimmed and lower-cased as `parse` does.
pub fn key_prefix(entry: &str) -> String {
    format!("pluginserver_{}_", key_of(&entry.trim().to_lowercase()))
}

/// Splits the raw value into entries. A missing key, an empty list, `"NONE"`
/// and `""` mean no servers; a string may be comma-separated (raw kong.conf text).
fn entries(value: Option<&Value>, errors: &mut Vec<String>) -> Vec<String> {
    let is_none = |s: &str| s.trim().is_empty() || s.trim() == "NONE";
    match value {
        None => vec![],
        Some(Value::Text(s)) if is_none(s) => vec![],
        Some(Value::Text(s)) => s.split(',').map(|e| e.trim().to_string()).collect(),
        Some(Value::List(items)) => {
            if let [Value::Text(only)] = items.as_slice()
                && only.trim() == "NONE"
            {
                return vec![];
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Text(s) => out.push(s.trim().to_string()),
                    other => errors.push(format!(
                        "pluginserver_names: entry {} is {other}; expected a server name (string)",
                        i + 1
                    )),
                }
            }
            out
        }
        Some(other) => {
            errors.push(format!(
                "pluginserver_names: got {other}; expected a list of server names"
            ));
            vec![]
        }
    }
}

/// The listed servers in order, with an error for each empty, invalid or
/// duplicate name (two names whose settings keys collide count as duplicates).
pub fn parse(value: Option<&Value>, errors: &mut Vec<String>) -> Vec<Listed> {
    let mut listed: Vec<Listed> = Vec::new();
    for (i, entry) in entries(value, errors).into_iter().enumerate() {
        let n = i + 1;
        let name = entry.to_lowercase();
        if name.is_empty() {
            errors.push(format!("pluginserver_names: entry {n} is empty"));
            continue;
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            errors.push(format!(
                "pluginserver_names: invalid name '{entry}' (entry {n}): character '{bad}' is not allowed; \
                 expected only a-z, 0-9, '_' and '-'"
            ));
            continue;
        }
        let key = key_of(&name);
        if let Some(prev) = listed.iter().find(|l| l.key == key) {
            if prev.name == name {
                errors.push(format!(
                    "pluginserver_names: duplicate name '{name}' (entry {n})"
                ));
            } else {
                errors.push(format!(
                    "pluginserver_names: names '{}' and '{name}' (entry {n}) would share the settings \
                     pluginserver_{key}_*",
                    prev.name
                ));
            }
            continue;
        }
        listed.push(Listed { name, key });
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Option<Value>) -> (Vec<String>, Vec<String>) {
        let mut errors = vec![];
        let l = parse(v.as_ref(), &mut errors);
        (l.into_iter().map(|l| l.name).collect(), errors)
    }

    fn list(items: &[&str]) -> Option<Value> {
        Some(Value::List(
            items.iter().map(|s| Value::Text(s.to_string())).collect(),
        ))
    }

    #[test]
    fn missing_empty_and_none_mean_no_servers() {
        for v in [
            None,
            list(&[]),
            list(&["NONE"]),
            Some(Value::Text("NONE".into())),
            Some(Value::Text("".into())),
        ] {
            assert_eq!(names(v), (vec![], vec![]));
        }
    }

    #[test]
    fn names_are_lower_cased_in_order_and_keys_use_underscores() {
        let mut errors = vec![];
        let l = parse(list(&["Go-Hello", "py"]).as_ref(), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(
            l,
            vec![
                Listed {
                    name: "go-hello".into(),
                    key: "go_hello".into()
                },
                Listed {
                    name: "py".into(),
                    key: "py".into()
                }
            ]
        );
    }

    #[test]
    fn key_prefixes_are_those_of_the_parsed_names() {
        assert_eq!(key_prefix(" Go-Hello "), "pluginserver_go_hello_");
        assert_eq!(key_prefix("py"), "pluginserver_py_");
        let mut errors = vec![];
        let l = parse(list(&[" My-Server"]).as_ref(), &mut errors);
        assert_eq!(
            format!("pluginserver_{}_", l[0].key),
            key_prefix(" My-Server")
        );
    }

    #[test]
    fn a_raw_string_is_comma_separated() {
        let (n, e) = names(Some(Value::Text("a, b-c ,d".into())));
        assert_eq!(n, ["a", "b-c", "d"]);
        assert!(e.is_empty());
    }

    #[test]
    fn empty_invalid_and_duplicate_names_are_all_reported() {
        let (n, e) = names(list(&[
            "ok",
            "",
            "go hello",
            "OK",
            "a_b",
            "a-b",
            "caf\u{e9}",
        ]));
        assert_eq!(n, ["ok", "a_b"]);
        assert_eq!(
            e,
            [
                "pluginserver_names: entry 2 is empty",
                "pluginserver_names: invalid name 'go hello' (entry 3): character ' ' is not allowed; \
                 expected only a-z, 0-9, '_' and '-'",
                "pluginserver_names: duplicate name 'ok' (entry 4)",
                "pluginserver_names: names 'a_b' and 'a-b' (entry 6) would share the settings pluginserver_a_b_*",
                "pluginserver_names: invalid name 'caf\u{e9}' (entry 7): character '\u{e9}' is not allowed; \
                 expected only a-z, 0-9, '_' and '-'",
            ]
        );
    }

    #[test]
    fn non_string_entries_and_values_are_errors() {
        let (_, e) = names(Some(Value::List(vec![Value::Bool(true)])));
        assert_eq!(
            e,
            ["pluginserver_names: entry 1 is true; expected a server name (string)"]
        );
        let (_, e) = names(Some(Value::Number(3.0)));
        assert_eq!(
            e,
            ["pluginserver_names: got 3; expected a list of server names"]
        );
    }
}
