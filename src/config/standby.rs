//! The warm standby of a managed server (`pluginserver_<k>_standby`): a second,
//! already-started process of the same server listening on `<socket>.standby`,
//! renamed over the socket when the active server dies (docs/ROBUSTNESS.md).
//!
//! A standby needs a start command that names the socket: the argument equal to
//! the socket's path or file name (alone or as `--opt=value`) is replaced with
//! the standby's. A command that derives its socket otherwise (go-pdk names it
//! after its executable) cannot have one.

use serde::Serialize;

use super::shell_word;
use super::value::{self, Value};

/// What `pluginserver_<k>_standby` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StandbyMode {
    /// A standby when the server's start (spawn to ready) is slow and the
    /// command names its socket.
    #[default]
    Auto,
    /// Always (a configuration error when the command cannot be redirected).
    On,
    Off,
}

impl StandbyMode {
    /// `auto`, `on`/`true` or `off`/`false` (any case, or a real boolean).
    pub fn parse(value: &Value) -> Result<StandbyMode, String> {
        if matches!(value, Value::Text(s) if s.trim().eq_ignore_ascii_case("auto")) {
            return Ok(StandbyMode::Auto);
        }
        match value::boolean(value) {
            Ok(true) => Ok(StandbyMode::On),
            Ok(false) => Ok(StandbyMode::Off),
            Err(_) => Err("auto, on or off".into()),
        }
    }
}

/// The standby's socket: beside the server's (same directory, so that the
/// promotion's `rename(2)` is atomic).
pub fn standby_socket(socket: &str) -> String {
    format!("{socket}.standby")
}

/// One shell word of a command line: its bytes in the line and its value once
/// the shell removed the quotes; `None` for a word the shell would expand.
struct Word {
    span: (usize, usize),
    value: Option<String>,
}

/// Splits a command line into words as `sh` does for plain words, quotes and
/// backslashes. A word with `$`, a backquote, a glob or a redirection has no
/// value (it cannot be compared).
fn words(cmd: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut chars = cmd.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_ascii_whitespace() {
            chars.next();
            continue;
        }
        let mut value = String::new();
        let mut plain = true;
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c.is_ascii_whitespace() {
                break;
            }
            chars.next();
            end = i + c.len_utf8();
            match c {
                '\'' => {
                    for (j, q) in chars.by_ref() {
                        end = j + q.len_utf8();
                        if q == '\'' {
                            break;
                        }
                        value.push(q);
                    }
                }
                '"' => {
                    while let Some((j, q)) = chars.next() {
                        end = j + q.len_utf8();
                        match q {
                            '"' => break,
                            '\\' => {
                                if let Some((k, e)) = chars.next() {
                                    end = k + e.len_utf8();
                                    if !"$`\"\\\n".contains(e) {
                                        value.push('\\');
                                    }
                                    value.push(e);
                                }
                            }
                            '$' | '`' => {
                                plain = false;
                                value.push(q);
                            }
                            _ => value.push(q),
                        }
                    }
                }
                '\\' => {
                    if let Some((k, e)) = chars.next() {
                        end = k + e.len_utf8();
                        value.push(e);
                    }
                }
                '$' | '`' | '*' | '?' | '[' | '<' | '>' | '|' | '&' | ';' | '(' | ')' | '~' => {
                    plain = false;
                    value.push(c);
                }
                _ => value.push(c),
            }
        }
        out.push(Word {
            span: (start, end),
            value: plain.then_some(value),
        });
    }
    out
}

/// Characters besides ASCII letters and digits that a value may hold and still
/// be a shell word without quotes (an argument such as `--socket=<path>`).
const VALUE_SAFE: &str = "_./+-@%,:=";

/// The standby's start command: `cmd` with the argument that names `socket`
/// (its whole path, or its file name, alone or after `=`) naming the standby's
/// socket instead. `None` when no argument (other than the program) names it.
pub fn standby_command(cmd: &str, socket: &str) -> Option<String> {
    let file = std::path::Path::new(socket).file_name()?.to_str()?;
    let renamed = |v: &str| -> Option<String> {
        renamed_value(v, socket, file).or_else(|| {
            let (opt, rest) = v.split_once('=')?;
            if !opt.starts_with('-') {
                return None;
            }
            renamed_value(rest, socket, file).map(|r| format!("{opt}={r}"))
        })
    };
    let words = words(cmd);
    let (i, new) = words
        .iter()
        .enumerate()
        .skip(1)
        .find_map(|(i, w)| Some((i, renamed(w.value.as_deref()?)?)))?;
    let (a, b) = words[i].span;
    Some(format!(
        "{}{}{}",
        &cmd[..a],
        shell_word(&new, VALUE_SAFE),
        &cmd[b..]
    ))
}

fn renamed_value(v: &str, socket: &str, file: &str) -> Option<String> {
    if v == socket || v == file {
        Some(standby_socket(v))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_naming_the_socket_file_is_redirected() {
        let js = "node /x/kong-js-pluginserver -d /p -p /k --sock-name js.socket --verbose";
        assert_eq!(
            standby_command(js, "/k/js.socket").unwrap(),
            "node /x/kong-js-pluginserver -d /p -p /k --sock-name js.socket.standby --verbose"
        );
        let py = "python3 -u srv.py -p /k --socket-name=py.socket";
        assert_eq!(
            standby_command(py, "/k/py.socket").unwrap(),
            "python3 -u srv.py -p /k --socket-name=py.socket.standby"
        );
    }

    #[test]
    fn the_whole_path_is_redirected_even_quoted() {
        assert_eq!(
            standby_command("listen.py /tmp/a b/s.sock 0.2", "/tmp/a b/s.sock"),
            None,
            "an unquoted path with a blank is two words"
        );
        assert_eq!(
            standby_command("listen.py '/tmp/a b/s.sock' 0.2", "/tmp/a b/s.sock").unwrap(),
            "listen.py '/tmp/a b/s.sock.standby' 0.2"
        );
        assert_eq!(
            standby_command("listen.py \"/tmp/s.sock\" 0.2", "/tmp/s.sock").unwrap(),
            "listen.py /tmp/s.sock.standby 0.2"
        );
    }

    #[test]
    fn a_command_that_does_not_name_its_socket_has_no_standby() {
        // go-pdk derives its socket from -kong-prefix and its own name
        assert_eq!(
            standby_command(
                "/usr/local/bin/go-hello -kong-prefix /k",
                "/k/go-hello.socket"
            ),
            None
        );
        // the program itself is not an argument; an expanded word is not compared
        assert_eq!(standby_command("s.socket -x", "/k/s.socket"), None);
        assert_eq!(standby_command("srv --sock $S.socket", "/k/s.socket"), None);
        assert_eq!(standby_command("srv --sock=s.socketx", "/k/s.socket"), None);
        assert_eq!(standby_command("srv x=s.socket", "/k/s.socket"), None);
    }

    #[test]
    fn the_mode_reads_kong_words_and_refuses_others() {
        let t = |s: &str| Value::Text(s.into());
        assert_eq!(StandbyMode::parse(&t(" AUTO ")), Ok(StandbyMode::Auto));
        assert_eq!(StandbyMode::parse(&t("on")), Ok(StandbyMode::On));
        assert_eq!(
            StandbyMode::parse(&Value::Bool(false)),
            Ok(StandbyMode::Off)
        );
        assert_eq!(
            StandbyMode::parse(&t("maybe")),
            Err("auto, on or off".to_string())
        );
        assert_eq!(
            StandbyMode::parse(&Value::Number(1.0)),
            Err("auto, on or off".to_string())
        );
    }
}
