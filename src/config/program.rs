//! Finding the program of a command line the way the supervisor will run it:
//! `/bin/sh -c "exec <cmd>"` with `PATH` set to the definition's `path`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// What `dash` searches when `PATH` is unset (nginx workers have no environment).
pub const SH_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Shell words that are not programs: a command starting with one is left alone.
const SHELL_WORDS: &[&str] = &[
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while", ".", ":", "break", "continue", "eval", "exec", "exit", "export", "readonly",
    "return", "set", "shift", "times", "trap", "unset", "cd", "command", "ulimit", "umask", "wait",
];

/// Characters besides ASCII letters and digits that a path may hold and still
/// be a shell word without quotes.
pub(crate) const PATH_SAFE: &str = "_./+-@%,:";

/// Characters that the shell takes literally in a word.
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || PATH_SAFE.contains(c)
}

/// The program of a command line: its first word when that word is a plain path or
/// name. `None` when the shell would interpret it (quotes, variables, `VAR=x cmd`,
/// redirections, keywords, builtins...): such a command is not checked.
pub fn program_of(command: &str) -> Option<&str> {
    let word = command.split_ascii_whitespace().next()?;
    if !word.chars().all(is_plain) || SHELL_WORDS.contains(&word) {
        return None;
    }
    Some(word)
}

/// Why a program cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotFound,
    NotInPath {
        path: String,
        not_executable: Vec<PathBuf>,
    },
    Directory,
    NotExecutable,
}

impl Problem {
    /// The message, naming the program.
    pub fn describe(&self, program: &str) -> String {
        match self {
            Problem::NotFound => format!("program '{program}' not found"),
            Problem::Directory => format!("program '{program}' is a directory"),
            Problem::NotExecutable => format!("program '{program}' is not executable"),
            Problem::NotInPath {
                path,
                not_executable,
            } => {
                let mut msg = format!("program '{program}' not found in PATH ({path})");
                if !not_executable.is_empty() {
                    let list: Vec<String> = not_executable
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                    msg.push_str(&format!(
                        " ({} exists but is not executable)",
                        list.join(", ")
                    ));
                }
                msg
            }
        }
    }
}

/// Whether the file at `path` may be executed by this process (as `sh` checks).
fn executable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// Checks one file: exists, not a directory, executable.
pub fn check_file(path: &Path) -> Result<(), Problem> {
    match std::fs::metadata(path) {
        Err(_) => Err(Problem::NotFound),
        Ok(m) if m.is_dir() => Err(Problem::Directory),
        Ok(_) if !executable(path) => Err(Problem::NotExecutable),
        Ok(_) => Ok(()),
    }
}

/// Resolves a program: a word with `/` is a path (relative to the current
/// directory), a bare name is searched in `path` (an empty entry is `.`).
pub fn resolve(program: &str, path: &str) -> Result<PathBuf, Problem> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return check_file(&p).map(|()| p);
    }
    let mut not_executable = Vec::new();
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        match check_file(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Problem::NotExecutable) => not_executable.push(candidate),
            Err(_) => {}
        }
    }
    Err(Problem::NotInPath {
        path: path.to_string(),
        not_executable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testdir::TestDir;

    #[test]
    fn program_is_the_first_plain_word() {
        assert_eq!(
            program_of("/usr/bin/go-hello -kong-prefix /tmp"),
            Some("/usr/bin/go-hello")
        );
        assert_eq!(program_of("  python3  x.py"), Some("python3"));
        assert_eq!(program_of("./bin/x"), Some("./bin/x"));
    }

    #[test]
    fn shell_constructs_are_left_alone() {
        for cmd in [
            "FOO=1 server",
            "$HOME/bin/server",
            "'/opt/my server'",
            "\"x\"",
            "exec server",
            "cd /tmp && server",
            "(server)",
            "~/bin/server",
            "if true; then x; fi",
            ">log server",
            "",
        ] {
            assert_eq!(program_of(cmd), None, "{cmd}");
        }
    }

    #[test]
    fn paths_are_checked_for_existence_kind_and_mode() {
        let d = TestDir::new("program-paths");
        let exe = d.file("exe", 0o755);
        let plain = d.file("plain", 0o644);
        assert_eq!(resolve(exe.to_str().unwrap(), ""), Ok(exe.clone()));
        assert_eq!(
            resolve(d.path().to_str().unwrap(), ""),
            Err(Problem::Directory)
        );
        assert_eq!(
            resolve(d.join("missing").to_str().unwrap(), ""),
            Err(Problem::NotFound)
        );
        // root may read anything but still needs an execute bit
        assert_eq!(
            resolve(plain.to_str().unwrap(), ""),
            Err(Problem::NotExecutable)
        );
    }

    #[test]
    fn bare_names_are_searched_in_path_order_skipping_non_executables() {
        let a = TestDir::new("program-path-a");
        let b = TestDir::new("program-path-b");
        a.file("srv", 0o644);
        let good = b.file("srv", 0o755);
        let path = format!("{}:{}", a.path().display(), b.path().display());
        assert_eq!(resolve("srv", &path), Ok(good));

        let only_a = a.path().display().to_string();
        let err = resolve("srv", &only_a).unwrap_err();
        assert_eq!(
            err.describe("srv"),
            format!(
                "program 'srv' not found in PATH ({only_a}) ({}/srv exists but is not executable)",
                only_a
            )
        );
        assert_eq!(
            resolve("nope", &only_a).unwrap_err().describe("nope"),
            format!("program 'nope' not found in PATH ({only_a})")
        );
    }
}
