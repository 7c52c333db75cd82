//! `pluginserver_*` keys that belong to no listed server or name no setting.
//! Kong ignores them silently; a typo then quietly falls back to a default.

use std::collections::BTreeMap;

use super::names::Listed;
use super::suffixes;
use super::suggest::closest;
use super::value::Value;

const NAMES_KEY: &str = "pluginserver_names";

/// One error for each `pluginserver_*` key (other than `pluginserver_names`)
/// that is not `pluginserver_<listed key>_<suffix>`, with a suggestion.
pub fn check(settings: &BTreeMap<String, Value>, listed: &[Listed], errors: &mut Vec<String>) {
    for key in settings.keys() {
        let Some(rest) = key.strip_prefix("pluginserver_") else {
            continue;
        };
        if key == NAMES_KEY || is_known(rest, listed) {
            continue;
        }
        errors.push(diagnose(key, rest, listed));
    }
}

fn is_known(rest: &str, listed: &[Listed]) -> bool {
    listed.iter().any(|l| {
        rest.strip_prefix(l.key.as_str())
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|suffix| suffixes::kind_of(suffix).is_some())
    })
}

fn diagnose(key: &str, rest: &str, listed: &[Listed]) -> String {
    // A listed server with a wrong setting: the longest server key that fits.
    let owner = listed
        .iter()
        .filter(|l| rest.len() > l.key.len() + 1 && rest.starts_with(&format!("{}_", l.key)))
        .max_by_key(|l| l.key.len());
    if let Some(l) = owner {
        let suffix = &rest[l.key.len() + 1..];
        let hint = match closest(suffix, suffixes::names()) {
            Some(s) => format!("did you mean pluginserver_{}_{s}?", l.key),
            None => format!(
                "expected one of: {}",
                suffixes::names().collect::<Vec<_>>().join(", ")
            ),
        };
        return format!("{key} (pluginserver {}): unknown setting; {hint}", l.name);
    }

    // A known setting of a server that is not listed.
    let split = suffixes::names()
        .filter(|s| rest.len() > s.len() + 1 && rest.ends_with(&format!("_{s}")))
        .max_by_key(|s| s.len());
    let listed_names = || {
        if listed.is_empty() {
            "pluginserver_names is empty".to_string()
        } else {
            let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
            format!("pluginserver_names is: {}", names.join(", "))
        }
    };
    if let Some(suffix) = split {
        let server = &rest[..rest.len() - suffix.len() - 1];
        return match closest(server, listed.iter().map(|l| l.key.as_str())) {
            Some(k) => format!(
                "{key}: no pluginserver '{server}' in pluginserver_names; did you mean pluginserver_{k}_{suffix}?"
            ),
            None => format!(
                "{key}: no pluginserver '{server}' in pluginserver_names ({})",
                listed_names()
            ),
        };
    }

    // Neither: compare with every valid key.
    let valid: Vec<String> = listed
        .iter()
        .flat_map(|l| suffixes::names().map(move |s| format!("pluginserver_{}_{s}", l.key)))
        .collect();
    match closest(key, valid.iter().map(String::as_str)) {
        Some(k) => format!("{key}: unknown setting; did you mean {k}?"),
        None => format!(
            "{key}: unknown setting; expected pluginserver_<name>_<setting> ({})",
            listed_names()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(names: &[&str]) -> Vec<Listed> {
        names
            .iter()
            .map(|n| Listed {
                name: n.to_string(),
                key: n.replace('-', "_"),
            })
            .collect()
    }

    fn errors_for(keys: &[&str], names: &[&str]) -> Vec<String> {
        let settings: BTreeMap<String, Value> = keys
            .iter()
            .map(|k| (k.to_string(), Value::Text("x".into())))
            .collect();
        let mut errors = vec![];
        check(&settings, &listed(names), &mut errors);
        errors
    }

    #[test]
    fn listed_keys_other_keys_and_the_names_key_pass() {
        let e = errors_for(
            &[
                "pluginserver_names",
                "pluginserver_go_hello_socket",
                "pluginserver_go_hello_respawn_delay_max",
                "pluginserver_go_socket",
                "prefix",
                "log_level",
            ],
            &["go-hello", "go"],
        );
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn an_unknown_suffix_names_the_server_and_suggests() {
        assert_eq!(
            errors_for(&["pluginserver_go_hello_start_command"], &["go-hello"]),
            [
                "pluginserver_go_hello_start_command (pluginserver go-hello): unknown setting; \
              did you mean pluginserver_go_hello_start_cmd?"
            ]
        );
        let e = errors_for(&["pluginserver_go_hello_zzz"], &["go-hello"]);
        assert!(
            e[0].starts_with(
                "pluginserver_go_hello_zzz (pluginserver go-hello): unknown setting; expected one of: socket, start_cmd"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn the_longest_server_key_owns_the_setting() {
        assert_eq!(
            errors_for(&["pluginserver_go_hello_sockt"], &["go", "go-hello"]),
            [
                "pluginserver_go_hello_sockt (pluginserver go-hello): unknown setting; \
              did you mean pluginserver_go_hello_socket?"
            ]
        );
    }

    #[test]
    fn an_unlisted_server_suggests_the_closest_listed_one() {
        assert_eq!(
            errors_for(&["pluginserver_gohello_socket"], &["go-hello", "py"]),
            [
                "pluginserver_gohello_socket: no pluginserver 'gohello' in pluginserver_names; \
              did you mean pluginserver_go_hello_socket?"
            ]
        );
        assert_eq!(
            errors_for(&["pluginserver_other_query_cmd"], &["go-hello"]),
            [
                "pluginserver_other_query_cmd: no pluginserver 'other' in pluginserver_names \
              (pluginserver_names is: go-hello)"
            ]
        );
        assert_eq!(
            errors_for(&["pluginserver_other_query_cmd"], &[]),
            [
                "pluginserver_other_query_cmd: no pluginserver 'other' in pluginserver_names \
              (pluginserver_names is empty)"
            ]
        );
    }

    #[test]
    fn a_key_with_neither_server_nor_setting_is_compared_with_all_keys() {
        assert_eq!(
            errors_for(&["pluginserver_py_sockett"], &["py"]),
            [
                "pluginserver_py_sockett (pluginserver py): unknown setting; did you mean pluginserver_py_socket?"
            ]
        );
        assert_eq!(
            errors_for(&["pluginserver_pysocket"], &["py"]),
            ["pluginserver_pysocket: unknown setting; did you mean pluginserver_py_socket?"]
        );
        assert_eq!(
            errors_for(&["pluginserver_"], &[]),
            [
                "pluginserver_: unknown setting; expected pluginserver_<name>_<setting> (pluginserver_names is empty)"
            ]
        );
    }
}
