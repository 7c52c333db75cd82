//! Validation of Kong's `pluginserver_*` settings: Kong's own
//! behaviour and messages, plus the defects Kong lets through, all reported at once.

mod keys;
mod names;
mod program;
mod server_def;
mod sockets;
mod standby;
mod suffixes;
mod suggest;
#[cfg(test)]
mod testdir;
mod value;

use std::collections::BTreeMap;
use std::path::Path;

pub use names::key_prefix;
pub use program::SH_DEFAULT_PATH;
pub use server_def::ServerDef;
pub use standby::{StandbyMode, standby_command, standby_socket};
pub use value::{MAX_INT_SETTING, Value};

use names::Listed;
use program::PATH_SAFE;
use suffixes::Kind;

/// The setting suffixes of one server (`pluginserver_<k>_<suffix>`), in doc order.
pub fn setting_names() -> impl Iterator<Item = &'static str> {
    suffixes::names()
}

/// Kong's `DEFAULT_PLUGINSERVER_PATH`.
pub const DEFAULT_DIR: &str = "/usr/local/bin";

/// Longest unix socket path: `sun_path` holds 108 bytes including the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Kong's settings table: `prefix` and `pluginserver_*` are read, any other key is ignored.
pub type Settings = BTreeMap<String, Value>;

/// Where default binaries and bare program names are looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Directory of the default binaries (`/usr/local/bin`).
    pub default_dir: String,
    /// The `PATH` bare program names are searched in, recorded in each definition.
    pub path: String,
}

impl Default for Options {
    /// `/usr/local/bin` and this process's `PATH` (the shell's default when unset).
    fn default() -> Self {
        Options {
            default_dir: DEFAULT_DIR.to_string(),
            path: std::env::var("PATH").unwrap_or_else(|_| SH_DEFAULT_PATH.to_string()),
        }
    }
}

/// Valid settings: the definitions in `pluginserver_names` order, and warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub defs: Vec<ServerDef>,
    pub warnings: Vec<String>,
}

/// Invalid settings: every error found, and the warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks and resolves the `pluginserver_*` settings.
///
/// # Errors
/// Every defect at once, each message naming the setting and the server.
pub fn parse(settings: &Settings, opts: &Options) -> Result<Accepted, Rejected> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let listed = names::parse(settings.get("pluginserver_names"), &mut errors);
    let prefix = match settings.get("prefix") {
        None => None,
        Some(v) => match value::text(v, "directory path") {
            Ok(p) => Some(trim_trailing_slashes(&p)),
            Err(expected) => {
                errors.push(format!("prefix: got {v}; expected {expected}"));
                None
            }
        },
    };

    let mut defs = Vec::with_capacity(listed.len());
    for server in &listed {
        let mut check = ServerCheck {
            settings,
            server,
            errors: &mut errors,
        };
        defs.push(check.resolve(prefix.as_deref(), opts, &mut warnings));
    }
    sockets::check_unique(&listed, &defs, &mut errors);
    keys::check(settings, &listed, &mut errors);

    if errors.is_empty() {
        Ok(Accepted { defs, warnings })
    } else {
        Err(Rejected { errors, warnings })
    }
}

fn trim_trailing_slashes(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

/// `text` as one shell word: as it is when it is not empty and every character
/// is an ASCII letter, a digit or one of `safe`, else single-quoted.
fn shell_word(text: &str, safe: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || safe.contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The checks of one listed server; errors go to the shared list.
struct ServerCheck<'a> {
    settings: &'a Settings,
    server: &'a Listed,
    errors: &'a mut Vec<String>,
}

impl ServerCheck<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("pluginserver_{}_{suffix}", self.server.key)
    }

    fn get(&self, suffix: &str) -> Option<&Value> {
        self.settings.get(&self.key(suffix))
    }

    fn error(&mut self, suffix: &str, problem: impl std::fmt::Display) {
        let msg = format!(
            "{} (pluginserver {}): {problem}",
            self.key(suffix),
            self.server.name
        );
        self.errors.push(msg);
    }

    /// A number or flag setting, or its default; records an error and returns the default.
    fn number(&mut self, suffix: &str) -> u64 {
        let kind = suffixes::kind_of(suffix).expect("known suffix");
        let (default, unit, zero_ok) = match kind {
            Kind::Millis(d) => (d, "milliseconds", false),
            Kind::MillisOrOff(d) => (d, "milliseconds", true),
            Kind::Size(d) => (d, "bytes", false),
            Kind::Count(d) => (d, "log events", false),
            _ => unreachable!("{suffix} is not a number"),
        };
        let Some(v) = self.get(suffix) else {
            return default;
        };
        let checked = if zero_ok {
            value::int_or_off(v, unit)
        } else {
            value::positive_int(v, unit)
        };
        match checked {
            Ok(n) => n,
            Err(expected) => {
                let v = v.clone();
                self.error(suffix, format!("got {v}; expected {expected}"));
                default
            }
        }
    }

    fn flag(&mut self, suffix: &str) -> bool {
        let Some(Kind::Flag(default)) = suffixes::kind_of(suffix) else {
            unreachable!("{suffix} is not a flag")
        };
        let Some(v) = self.get(suffix) else {
            return default;
        };
        match value::boolean(v) {
            Ok(b) => b,
            Err(expected) => {
                let v = v.clone();
                self.error(suffix, format!("got {v}; expected {expected}"));
                default
            }
        }
    }

    fn socket(&mut self, prefix: Option<&str>) -> String {
        let (socket, origin) = match self.get("socket") {
            Some(v) => match value::text(v, "socket path") {
                Ok(s) => (s, "socket path"),
                Err(expected) => {
                    let v = v.clone();
                    self.error("socket", format!("got {v}; expected {expected}"));
                    return String::new();
                }
            },
            None => match prefix {
                Some(p) => (
                    format!("{p}/{}.socket", self.server.name),
                    "default socket path",
                ),
                None => {
                    self.error(
                        "socket",
                        "not set, and prefix is not set for the default <prefix>/<name>.socket",
                    );
                    return String::new();
                }
            },
        };
        if socket.len() > MAX_SOCKET_PATH {
            let hint = if origin == "socket path" {
                ""
            } else {
                "; set a shorter prefix or this setting"
            };
            self.error(
                "socket",
                format!(
                    "{origin} '{socket}' is {} bytes long; a unix socket path may have at most {MAX_SOCKET_PATH} bytes{hint}",
                    socket.len()
                ),
            );
        }
        socket
    }

    /// An explicit command: non-empty, and its program (if plain) runnable.
    fn command(&mut self, suffix: &str, v: &Value, path: &str) -> Option<String> {
        let cmd = match value::text(v, "command line") {
            Ok(c) => c,
            Err(expected) => {
                let v = v.clone();
                self.error(suffix, format!("got {v}; expected {expected}"));
                return None;
            }
        };
        if let Some(prog) = program::program_of(&cmd)
            && let Err(problem) = program::resolve(prog, path)
        {
            self.error(
                suffix,
                format!("{} (command '{cmd}')", problem.describe(prog)),
            );
        }
        Some(cmd)
    }

    fn resolve(
        &mut self,
        prefix: Option<&str>,
        opts: &Options,
        warnings: &mut Vec<String>,
    ) -> ServerDef {
        let name = self.server.name.clone();
        let socket = self.socket(prefix);

        // Kong: `<default dir>/<name>`, when it exists, supplies both commands.
        let bin = Path::new(&opts.default_dir).join(&name);
        let bin_str = bin.to_string_lossy().into_owned();
        let default_exists = bin.exists();
        let mut uses_default = Vec::new();

        let start_command = match self.get("start_cmd").cloned() {
            Some(v) => self.command("start_cmd", &v, &opts.path),
            None if default_exists => {
                uses_default.push(self.key("start_cmd"));
                Some(shell_word(&bin_str, PATH_SAFE))
            }
            None => {
                warnings.push(format!(
                    "start_command undefined for pluginserver {name}; assuming external process management"
                ));
                None
            }
        };
        let query_command = match self.get("query_cmd").cloned() {
            Some(v) => self
                .command("query_cmd", &v, &opts.path)
                .unwrap_or_default(),
            None if default_exists => {
                uses_default.push(self.key("query_cmd"));
                format!("{} -dump", shell_word(&bin_str, PATH_SAFE))
            }
            None => {
                self.errors
                    .push(format!("query_command undefined for pluginserver {name}"));
                String::new()
            }
        };
        if !uses_default.is_empty()
            && let Err(problem) = program::check_file(&bin)
        {
            self.errors.push(format!(
                "{} (pluginserver {name}): default {}",
                uses_default.join(" and "),
                problem.describe(&bin_str)
            ));
        }

        let before = self.errors.len();
        let respawn_delay = self.number("respawn_delay");
        let respawn_delay_max = self.number("respawn_delay_max");
        // Compared only when both are valid (a refused value stands in as its default).
        if self.errors.len() == before && respawn_delay_max < respawn_delay {
            let delay_key = self.key("respawn_delay");
            self.error(
                "respawn_delay_max",
                format!("{respawn_delay_max} is less than {delay_key} ({respawn_delay}); expected a value >= {respawn_delay}"),
            );
        }

        let (socket_for_standby, start_for_standby) = (socket.clone(), start_command.clone());
        ServerDef {
            name,
            socket,
            start_command,
            query_command,
            path: opts.path.clone(),
            query_timeout: self.number("query_timeout"),
            stop_timeout: self.number("stop_timeout"),
            respawn_delay,
            respawn_delay_max,
            respawn_reset: self.number("respawn_reset"),
            ready_timeout: self.number("ready_timeout"),
            connect_timeout: self.number("connect_timeout"),
            send_timeout: self.number("send_timeout"),
            read_timeout: self.number("read_timeout"),
            fail_open: self.flag("fail_open"),
            max_message_size: self.number("max_message_size"),
            log_window: self.number("log_window"),
            log_queue_max: self.number("log_queue_max"),
            hang_timeout: self.number("hang_timeout"),
            standby: self.standby(socket_for_standby, start_for_standby),
        }
    }

    /// `pluginserver_<k>_standby`; `on` needs a start command that names the
    /// socket, and room for `.standby` in the socket path.
    fn standby(&mut self, socket: String, start: Option<String>) -> StandbyMode {
        let Some(v) = self.get("standby").cloned() else {
            return StandbyMode::default();
        };
        let mode = match StandbyMode::parse(&v) {
            Ok(m) => m,
            Err(expected) => {
                self.error("standby", format!("got {v}; expected {expected}"));
                return StandbyMode::default();
            }
        };
        if mode != StandbyMode::On || socket.is_empty() {
            return mode;
        }
        let problem = match start {
            None => Some("on, but the server is external (no start_cmd)".to_string()),
            Some(cmd) if standby_command(&cmd, &socket).is_none() => Some(format!(
                "on, but start_cmd '{cmd}' has no argument naming the socket '{socket}' (its path or file name), so a standby cannot listen elsewhere"
            )),
            Some(_) if standby_socket(&socket).len() > MAX_SOCKET_PATH => Some(format!(
                "on, but the standby socket '{}' would be longer than {MAX_SOCKET_PATH} bytes",
                standby_socket(&socket)
            )),
            Some(_) => None,
        };
        if let Some(p) = problem {
            self.error("standby", p);
        }
        mode
    }
}

#[cfg(test)]
mod tests;
