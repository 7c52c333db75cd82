//! The supervisor's side of hang detection (`hang_timeout`, see `hang.rs`): it
//! starts a watcher per server, follows the server's state with it, and acts on
//! its reports: a managed server that answers nothing is killed (its process
//! group, SIGKILL) and respawned as after a crash; an external one is marked
//! `hung` until it answers again (the shim fails its events at once meanwhile).

use std::collections::HashMap;
use std::time::Duration;

use super::super::hang::{Beat, BeatKind, HangWatch, Wire, connections_open};
use super::{NGX_ERR, NGX_NOTICE, Phase, Server, State, Supervisor};
use crate::config::ServerDef;

impl Server {
    /// An external server, watched for hangs only.
    pub(super) fn external(def: ServerDef) -> Server {
        Server::new(def, String::new(), Phase::External, None)
    }

    pub(super) fn phase_is_external(&self) -> bool {
        matches!(self.phase, Phase::External)
    }
}

impl Supervisor {
    /// The protocol of each server (name -> `MsgPack:1` / `ProtoBuf:1`, from the
    /// info query): a server's hang watch needs it to ask the right question.
    pub fn with_protocols(mut self, protocols: HashMap<String, String>) -> Self {
        self.protocols = protocols;
        self
    }

    /// Starts the watcher of every server with a `hang_timeout` and a known protocol.
    pub(super) fn start_watches(&mut self) {
        for i in 0..self.servers.len() {
            let def = &self.servers[i].def;
            if def.hang_timeout == 0 {
                continue;
            }
            let name = def.name.clone();
            let Some(wire) = self.protocols.get(&name).and_then(|p| Wire::of(p)) else {
                self.log(
                    NGX_NOTICE,
                    format!(
                        "[pluginserver] pluginserver '{name}': protocol unknown, no hang detection"
                    ),
                );
                continue;
            };
            let started = HangWatch::start(
                i,
                def.socket.clone(),
                wire,
                Duration::from_millis(def.hang_timeout),
                self.beats.0.clone(),
            );
            match started {
                Ok(w) => self.servers[i].watch = Some(w),
                Err(e) => self.log(
                    NGX_ERR,
                    format!("[pluginserver] pluginserver '{name}': {e}"),
                ),
            }
        }
    }

    /// Called with every state published: a ready (or external) server is watched
    /// from now on; a server that is not running is not.
    pub(super) fn sync_watch(&self, i: usize, state: State) {
        let Some(w) = self.servers[i].watch.as_ref() else {
            return;
        };
        match state {
            State::Ready | State::External => {
                w.watch();
            }
            State::Hung => {}
            State::Starting | State::Backoff | State::Stopped | State::Failed => w.pause(),
        }
    }

    pub(super) fn on_beat(&mut self, beat: Beat) {
        let Some(s) = self.servers.get(beat.server) else {
            return;
        };
        let current = s.watch.as_ref().map(HangWatch::generation);
        if current != Some(beat.generation) {
            // about a process (or a state) that is gone
            return;
        }
        match (beat.kind, &s.phase) {
            (BeatKind::Silent { ms, why }, Phase::Ready) => self.kill_hung(beat.server, ms, why),
            (BeatKind::Silent { ms, why }, Phase::External) => self.mark_hung(beat.server, ms, why),
            (BeatKind::Answered, Phase::External) => {
                let name = s.def.name.clone();
                self.log(
                    NGX_NOTICE,
                    format!("[pluginserver] pluginserver '{name}' (external) answers again"),
                );
                self.publish(beat.server, State::External);
            }
            _ => {}
        }
    }

    fn what_happened(&self, i: usize, ms: u64, why: Option<String>) -> String {
        let def = &self.servers[i].def;
        match why {
            Some(err) => format!("unreachable: {err} for {ms} ms"),
            None => {
                let open = connections_open(&def.socket)
                    .map(|n| format!(" with {n} connections open"))
                    .unwrap_or_default();
                format!("hung: no answer for {ms} ms{open}")
            }
        }
    }

    /// A managed server answered nothing for `hang_timeout`: SIGKILL its process
    /// group; the exit that follows respawns it (at once, as the first exit).
    fn kill_hung(&mut self, i: usize, ms: u64, why: Option<String>) {
        let Some(pid) = self.servers[i].pid else {
            return;
        };
        let what = self.what_happened(i, ms, why);
        let s = &mut self.servers[i];
        s.hangs += 1;
        if let Some(w) = s.watch.as_ref() {
            w.pause();
        }
        let name = s.def.name.clone();
        self.log(
            NGX_ERR,
            format!("[pluginserver] pluginserver '{name}', pid {pid}, {what}; killing it"),
        );
        // The start time proves the pid is still the server the helper forked.
        let start = self.servers[i].pid_start;
        self.signal(Some(pid), libc::SIGKILL, start);
    }

    /// An external server answered nothing: it cannot be killed from here, so its
    /// events fail at once (state `hung`) until it answers again.
    fn mark_hung(&mut self, i: usize, ms: u64, why: Option<String>) {
        let what = self.what_happened(i, ms, why);
        let s = &mut self.servers[i];
        s.hangs += 1;
        let name = s.def.name.clone();
        self.log(
            NGX_ERR,
            format!("[pluginserver] pluginserver '{name}' (external), {what}; failing its events until it answers"),
        );
        self.publish(i, State::Hung);
    }
}
