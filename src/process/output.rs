//! What a server's output may cost: lines at a level the error log would not
//! print never leave Rust, and each server gets a budget of lines per log window;
//! the rest are dropped and counted, and summarised in one line per window.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Output lines of one server logged per log window; the rest are dropped.
pub const LINES_PER_WINDOW: u32 = 100;

/// nginx's most verbose level (`ngx.DEBUG`): everything is printed.
const NGX_DEBUG: u8 = 8;

/// The error log's level (`ngx.errlog.get_sys_filter_level()`); lines of a
/// larger (less severe) level are not printed, so they are not forwarded.
static LOG_LEVEL: AtomicU8 = AtomicU8::new(NGX_DEBUG);

/// Records the error log's level (an nginx level, `ngx.STDERR` 0 .. `ngx.DEBUG` 8).
pub fn set_log_level(level: u8) {
    LOG_LEVEL.store(level.min(NGX_DEBUG), Ordering::Relaxed);
}

/// Whether the error log prints lines of `level`.
pub fn printed(level: u8) -> bool {
    level <= LOG_LEVEL.load(Ordering::Relaxed)
}

/// The line budget of one server.
#[derive(Debug)]
pub struct OutputBudget {
    window: Duration,
    budget: u32,
    started: Option<Instant>,
    passed: u32,
    dropped: u64,
}

impl OutputBudget {
    pub fn new(window_ms: u64, budget: u32) -> Self {
        OutputBudget {
            window: Duration::from_millis(window_ms.max(1)),
            budget,
            started: None,
            passed: 0,
            dropped: 0,
        }
    }

    /// The window length in ms (for the summary line).
    pub fn window_ms(&self) -> u128 {
        self.window.as_millis()
    }

    /// Whether one more line may be logged now; counts it either way.
    /// Call [`Self::summary`] first, so that a finished window is reported.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.started.is_none_or(|s| now >= s + self.window) {
            self.started = Some(now);
            self.passed = 0;
        }
        if self.passed < self.budget {
            self.passed += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Counts `n` lines dropped elsewhere (a full queue) in this window.
    pub fn add_dropped(&mut self, n: u64, now: Instant) {
        if n > 0 {
            self.started.get_or_insert(now);
            self.dropped += n;
        }
    }

    /// When the current window ends, if it has drops to report.
    pub fn deadline(&self) -> Option<Instant> {
        match self.started {
            Some(s) if self.dropped > 0 => Some(s + self.window),
            _ => None,
        }
    }

    /// The count of lines dropped in a window that has ended (once per window).
    pub fn summary(&mut self, now: Instant) -> Option<u64> {
        let end = self.deadline()?;
        if now < end {
            return None;
        }
        self.started = None;
        self.passed = 0;
        Some(std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_budget_are_dropped_counted_and_summarised_once_per_window() {
        let t0 = Instant::now();
        let mut b = OutputBudget::new(1000, 3);
        let admitted = (0..10).filter(|_| b.admit(t0)).count();
        assert_eq!(admitted, 3);
        assert_eq!(b.summary(t0 + Duration::from_millis(999)), None);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(1000)));
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(b.summary(t1), Some(7));
        assert_eq!(b.summary(t1), None, "one summary per window");
        assert_eq!(b.deadline(), None);
        // A new window starts with a full budget.
        assert!(b.admit(t1));
        assert_eq!(b.deadline(), None, "no drops, nothing to report");
    }

    #[test]
    fn a_flood_costs_a_bounded_number_of_lines() {
        let t0 = Instant::now();
        let mut b = OutputBudget::new(100, LINES_PER_WINDOW);
        let mut logged = 0u64;
        let mut summaries = 0u64;
        let mut dropped = 0u64;
        // One million lines over one simulated second (ten windows).
        for i in 0..1_000_000u64 {
            let now = t0 + Duration::from_micros(i);
            if let Some(n) = b.summary(now) {
                summaries += 1;
                dropped += n;
            }
            if b.admit(now) {
                logged += 1;
            }
        }
        dropped += b.summary(t0 + Duration::from_secs(2)).unwrap_or(0);
        assert!(logged <= 10 * LINES_PER_WINDOW as u64 + LINES_PER_WINDOW as u64);
        assert_eq!(logged + dropped, 1_000_000);
        assert!((9..=11).contains(&summaries), "{summaries}");
    }
}
