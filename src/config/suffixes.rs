//! The settings one server can have (`pluginserver_<k>_<suffix>`), with their
//! defaults (docs/SETTINGS.md).

/// How a suffix's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The socket path (default `<prefix>/<name>.socket`).
    Socket,
    /// A command line (default from the default binary).
    Command,
    /// Milliseconds, a positive integer.
    Millis(u64),
    /// Milliseconds, or `0` for "off".
    MillisOrOff(u64),
    /// A positive integer that is not a time.
    Size(u64),
    /// A positive number of things (not bytes, not a time).
    Count(u64),
    /// A Kong boolean.
    Flag(bool),
    /// `auto`, `on` or `off` (`standby.rs`).
    Standby,
}

/// Every suffix, in the order the docs list them.
pub const SUFFIXES: &[(&str, Kind)] = &[
    ("socket", Kind::Socket),
    ("start_cmd", Kind::Command),
    ("query_cmd", Kind::Command),
    ("query_timeout", Kind::Millis(10_000)),
    ("stop_timeout", Kind::Millis(5_000)),
    ("respawn_delay", Kind::Millis(1_000)),
    ("respawn_delay_max", Kind::Millis(30_000)),
    ("respawn_reset", Kind::Millis(60_000)),
    ("ready_timeout", Kind::Millis(5_000)),
    ("connect_timeout", Kind::Millis(1_000)),
    ("send_timeout", Kind::Millis(5_000)),
    ("read_timeout", Kind::Millis(60_000)),
    ("fail_open", Kind::Flag(false)),
    ("max_message_size", Kind::Size(16 * 1024 * 1024)),
    ("log_window", Kind::Millis(1_000)),
    ("log_queue_max", Kind::Count(4_096)),
    ("hang_timeout", Kind::MillisOrOff(5_000)),
    ("standby", Kind::Standby),
];

/// The kind of `suffix`, if it is one.
pub fn kind_of(suffix: &str) -> Option<Kind> {
    SUFFIXES.iter().find(|(s, _)| *s == suffix).map(|(_, k)| *k)
}

/// All suffix names.
pub fn names() -> impl Iterator<Item = &'static str> {
    SUFFIXES.iter().map(|(s, _)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_suffix_ends_with_another_so_full_keys_are_unambiguous() {
        for a in names() {
            for b in names() {
                if a != b {
                    assert!(!a.ends_with(&format!("_{b}")), "{a} ends with _{b}");
                }
            }
        }
    }

    #[test]
    fn defaults_match_the_interfaces_table() {
        assert_eq!(kind_of("query_timeout"), Some(Kind::Millis(10_000)));
        assert_eq!(kind_of("respawn_delay_max"), Some(Kind::Millis(30_000)));
        assert_eq!(kind_of("read_timeout"), Some(Kind::Millis(60_000)));
        assert_eq!(kind_of("max_message_size"), Some(Kind::Size(16_777_216)));
        assert_eq!(kind_of("fail_open"), Some(Kind::Flag(false)));
        assert_eq!(kind_of("log_queue_max"), Some(Kind::Count(4_096)));
        assert_eq!(kind_of("ready_timeout"), Some(Kind::Millis(5_000)));
        assert_eq!(kind_of("hang_timeout"), Some(Kind::MillisOrOff(5_000)));
        assert_eq!(kind_of("standby"), Some(Kind::Standby));
        assert_eq!(kind_of("start_command"), None);
    }
}
