//! One socket, one server: two servers on the same socket path would each see
//! the other's plugins answer (or a foreign listener pass the readiness probe).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::names::Listed;
use super::server_def::ServerDef;

/// The path as compared: `.` components and repeated slashes removed, and the
/// directory resolved (symlinks, `..`) when it exists, so that two spellings of
/// one file compare equal. The file itself need not exist.
fn identity(socket: &str) -> PathBuf {
    let lexical: PathBuf = Path::new(socket)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    let (Some(dir), Some(file)) = (lexical.parent(), lexical.file_name()) else {
        return lexical;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match std::fs::canonicalize(dir) {
        Ok(real) => real.join(file),
        Err(_) => lexical,
    }
}

/// Records an error for every server whose socket (after defaults) is the socket
/// of an earlier server. `defs` and `listed` are in the same order.
pub fn check_unique(listed: &[Listed], defs: &[ServerDef], errors: &mut Vec<String>) {
    let mut owner: HashMap<PathBuf, &str> = HashMap::new();
    for (server, def) in listed.iter().zip(defs) {
        if def.socket.is_empty() {
            continue; // already reported as invalid
        }
        let id = identity(&def.socket);
        match owner.get(&id) {
            Some(first) => errors.push(format!(
                "pluginserver_{}_socket (pluginserver {}): socket '{}' is already the socket of pluginserver {first}",
                server.key, server.name, def.socket
            )),
            None => {
                owner.insert(id, &server.name);
            }
        }
    }
}
