//! The supervisor's side of its report queue. The queue is bounded (a server can
//! make the supervisor log without end); what happens when it is full depends on
//! the report: a log line is dropped and counted (one line says how many, once
//! there is room again), a server's state is never lost: the newest state of each
//! server waits here (older ones are replaced) until there is room.

use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use super::output;
use super::supervisor::{NGX_WARN, Report};

/// Places of a bounded queue kept free of log lines, for states and `Done`.
pub const RESERVED_FOR_STATES: usize = 256;
/// How long the last reports may wait for room when the supervisor ends.
const FINAL_WAIT: Duration = Duration::from_secs(1);

pub struct ReportSink {
    tx: Sender<Report>,
    /// States that found the queue full, at most one per server, oldest first.
    pending: Vec<Report>,
    dropped_logs: u64,
}

fn server_of(r: &Report) -> Option<&str> {
    match r {
        Report::State { name, .. } => Some(name),
        _ => None,
    }
}

impl ReportSink {
    pub fn new(tx: Sender<Report>) -> Self {
        ReportSink {
            tx,
            pending: Vec::new(),
            dropped_logs: 0,
        }
    }

    fn room_for_logs(&self) -> bool {
        self.tx
            .capacity()
            .is_none_or(|cap| self.tx.len() + RESERVED_FOR_STATES.min(cap / 2) < cap)
    }

    /// A line for the error log; dropped when the log would not print it, or
    /// when the queue is (nearly) full.
    pub fn log(&mut self, level: u8, msg: String) {
        if !output::printed(level) {
            return;
        }
        self.flush();
        if !self.room_for_logs() || self.tx.try_send(Report::Log { level, msg }).is_err() {
            self.dropped_logs += 1;
        }
    }

    /// A state change: queued, or kept (replacing this server's older pending state).
    pub fn state(&mut self, report: Report) {
        self.flush();
        let name = server_of(&report).map(str::to_owned);
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| server_of(p) == name.as_deref())
        {
            // Keep the order of servers; the newest state wins.
            self.pending.remove(i);
            self.pending.push(report);
            return;
        }
        if let Err(TrySendError::Full(r)) = self.tx.try_send(report) {
            self.pending.push(r);
        }
    }

    /// Moves what waits into the queue while there is room; then says how many
    /// log lines were dropped, if any.
    pub fn flush(&mut self) {
        while !self.pending.is_empty() {
            let r = self.pending.remove(0);
            if let Err(TrySendError::Full(r)) = self.tx.try_send(r) {
                self.pending.insert(0, r);
                return;
            }
        }
        if self.dropped_logs > 0 && self.room_for_logs() {
            let n = std::mem::take(&mut self.dropped_logs);
            let msg = format!(
                "[pluginserver] {n} supervisor log lines dropped (the report queue was full)"
            );
            if self
                .tx
                .try_send(Report::Log {
                    level: NGX_WARN,
                    msg,
                })
                .is_err()
            {
                self.dropped_logs += n;
            }
        }
    }

    /// The last reports (pending states, then `Done`): waits for room, bounded.
    pub fn finish(mut self) {
        for r in std::mem::take(&mut self.pending)
            .into_iter()
            .chain([Report::Done])
        {
            let _ = self.tx.send_timeout(r, FINAL_WAIT);
        }
    }

    /// Whether states wait for room (the supervisor then retries soon).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::supervisor::State;
    use super::*;
    use crate::test_support::LOG_LEVEL;
    use crossbeam_channel::bounded;

    fn state(name: &str, state: State) -> Report {
        Report::State {
            name: name.into(),
            state,
            pid: None,
            pid_start: None,
            restarts: 0,
            hangs: 0,
            last_exit: None,
            started_at: None,
            since: 0.0,
            note: None,
            standby: crate::process::standby::StandbyState::Off,
            standby_pid: None,
            standby_start: None,
            promotions: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_logs_and_keeps_the_newest_state_of_each_server() {
        let _level = LOG_LEVEL.read().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = bounded(RESERVED_FOR_STATES * 2 + 4);
        let mut sink = ReportSink::new(tx);
        for i in 0..10_000 {
            sink.log(4, format!("line {i}"));
        }
        assert_eq!(
            rx.len(),
            RESERVED_FOR_STATES + 4,
            "logs leave the reserve free"
        );
        for _ in 0..RESERVED_FOR_STATES {
            sink.state(state("filler", State::Starting));
        }
        sink.state(state("a", State::Starting));
        sink.state(state("b", State::Starting));
        sink.state(state("a", State::Ready));
        assert!(sink.has_pending());
        // The shim drains everything; the pending states come next, newest only.
        let drained: Vec<Report> = rx.try_iter().collect();
        assert_eq!(drained.len(), RESERVED_FOR_STATES * 2 + 4);
        sink.flush();
        let next: Vec<Report> = rx.try_iter().collect();
        assert_eq!(next[0], state("b", State::Starting));
        assert_eq!(next[1], state("a", State::Ready));
        match &next[2] {
            Report::Log { msg, .. } => assert!(
                msg.starts_with(&format!(
                    "[pluginserver] {} supervisor log lines dropped",
                    10_000 - RESERVED_FOR_STATES - 4
                )),
                "{msg}"
            ),
            other => panic!("{other:?}"),
        }
        sink.finish();
        assert_eq!(rx.try_iter().last(), Some(Report::Done));
    }

    #[test]
    fn lines_the_error_log_would_not_print_are_not_queued() {
        let _level = LOG_LEVEL.write().unwrap_or_else(|e| e.into_inner());
        let (tx, rx) = bounded(16);
        let mut sink = ReportSink::new(tx);
        output::set_log_level(4);
        sink.log(7, "info".into());
        sink.log(4, "error".into());
        output::set_log_level(8);
        let got: Vec<Report> = rx.try_iter().collect();
        assert_eq!(
            got,
            [Report::Log {
                level: 4,
                msg: "error".into()
            }]
        );
    }
}
