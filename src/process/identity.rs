//! Process identity and descriptor hygiene, shared with `kps-helper` (the code
//! lives in `helper/src/` so that both binaries build it): start times and pidfds
//! prove that a pid still names the process we recorded before we signal it, and
//! [`fds::close_from`] leaves a child only the descriptors it was given.

use serde::Deserialize;

#[path = "../../helper/src/fds.rs"]
pub mod fds;
#[path = "../../helper/src/procid.rs"]
mod procid;

pub use procid::{
    Identity, Pidfd, is_same, parent_pid, parse_start_time, signal_if_same, start_time,
};

/// A server of a previous generation as its supervisor recorded it in the shared
/// dict: `{ "pid": n, "start": t, "standby": { "pid": n, "start": t } }` (the
/// standby only when it had one), or a bare pid (recorded by an older version,
/// which cannot be proven to be that server any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Recorded {
    Process {
        pid: i32,
        start: Option<u64>,
        #[serde(default)]
        standby: Option<Previous>,
    },
    Pid(i32),
}

/// The standby process of a previous generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Previous {
    pub pid: i32,
    pub start: Option<u64>,
}

impl Recorded {
    /// The previous generation's standby, when it had one.
    pub fn standby(&self) -> Option<Recorded> {
        match *self {
            Recorded::Process {
                standby: Some(p), ..
            } => Some(Recorded::Process {
                pid: p.pid,
                start: p.start,
                standby: None,
            }),
            _ => None,
        }
    }

    pub fn pid(&self) -> i32 {
        match *self {
            Recorded::Process { pid, .. } | Recorded::Pid(pid) => pid,
        }
    }

    pub fn start(&self) -> Option<u64> {
        match *self {
            Recorded::Process { start, .. } => start,
            Recorded::Pid(_) => None,
        }
    }

    /// What the recorded pid names now; without a start time it cannot be ours.
    pub fn identity(&self) -> Identity {
        match self.start() {
            Some(start) => is_same(self.pid(), start),
            None if start_time(self.pid()).is_none() => Identity::Gone,
            None => Identity::Foreign,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sleeper;
    use std::process::Child;

    fn alive(child: &mut Child) -> bool {
        child.try_wait().unwrap().is_none()
    }

    #[test]
    fn the_start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
    }

    #[test]
    fn the_parent_is_field_4() {
        let mut child = sleeper(0);
        let me = std::process::id() as i32;
        assert_eq!(parent_pid(child.id() as i32), Some(me));
        // SAFETY: getppid has no preconditions.
        assert_eq!(parent_pid(me), Some(unsafe { libc::getppid() }));
        assert_eq!(parent_pid(0), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent_pid(child.id() as i32), None);
    }

    #[test]
    fn a_recorded_process_is_signalled_and_an_unrelated_one_with_its_pid_is_not() {
        // Record a process, let it exit and be reaped.
        let mut old = sleeper(0);
        let (old_pid, old_start) = (old.id() as i32, start_time(old.id() as i32).unwrap());
        assert_eq!(is_same(old_pid, old_start), Identity::Ours);
        old.kill().unwrap();
        old.wait().unwrap();
        assert_eq!(is_same(old_pid, old_start), Identity::Gone);
        assert_eq!(
            signal_if_same(old_pid, old_start, libc::SIGKILL),
            Identity::Gone
        );

        // An unrelated process (a group leader, as servers are) written where the
        // old pid was recorded: it is not ours, and survives the kill path.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut other = sleeper(0);
        let other_pid = other.id() as i32;
        let rec = Recorded::Process {
            pid: other_pid,
            start: Some(old_start),
            standby: None,
        };
        // (Started 20 ms later: start times count 10 ms ticks.)
        assert_ne!(start_time(other_pid), Some(old_start));
        assert_eq!(rec.identity(), Identity::Foreign);
        assert_eq!(
            signal_if_same(other_pid, old_start, libc::SIGKILL),
            Identity::Foreign
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(alive(&mut other), "an unrelated process was killed");
        // A bare pid (no start time) is never ours.
        assert_eq!(Recorded::Pid(other_pid).identity(), Identity::Foreign);

        // The process itself, with its own start time, is signalled (with its group).
        let own = start_time(other_pid).unwrap();
        assert_eq!(
            signal_if_same(other_pid, own, libc::SIGKILL),
            Identity::Ours
        );
        other.wait().unwrap();
    }

    #[test]
    fn recorded_processes_parse_from_both_shapes() {
        let r: Recorded = serde_json::from_str(r#"{"pid": 5, "start": 77}"#).unwrap();
        assert_eq!((r.pid(), r.start()), (5, Some(77)));
        assert_eq!(r.standby(), None);
        let r: Recorded =
            serde_json::from_str(r#"{"pid": 5, "start": 77, "standby": {"pid": 8, "start": 9}}"#)
                .unwrap();
        let s = r.standby().unwrap();
        assert_eq!((s.pid(), s.start()), (8, Some(9)));
        let r: Recorded = serde_json::from_str("6").unwrap();
        assert_eq!((r.pid(), r.start()), (6, None));
    }
}
