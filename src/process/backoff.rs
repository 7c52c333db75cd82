//! Respawn delays. The first exit of a server (or the first after it stayed up for
//! `respawn_reset`) is respawned at once: a single crash must not cost the
//! requests that arrive meanwhile. From the second exit within `respawn_reset` on,
//! the delay is `respawn_delay`, doubling up to `respawn_delay_max`, so that a
//! crash loop stays cheap.

/// Smallest delay of a backed-off respawn, even if configured lower.
pub const MIN_DELAY_MS: u64 = 10;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: u64,
    max: u64,
    reset: u64,
    /// Exits since the last reset; the first one is respawned at once.
    step: u32,
}

impl Backoff {
    pub fn new(delay_ms: u64, max_ms: u64, reset_ms: u64) -> Self {
        let base = delay_ms.max(MIN_DELAY_MS);
        Backoff {
            base,
            max: max_ms.max(base),
            reset: reset_ms,
            step: 0,
        }
    }

    /// The delay before the next spawn, for a server that ran `uptime_ms` before
    /// exiting: 0 for the first exit since the last reset.
    pub fn next_delay(&mut self, uptime_ms: u64) -> u64 {
        if uptime_ms >= self.reset {
            self.step = 0;
        }
        if self.step == 0 {
            self.step = 1;
            return 0;
        }
        let factor = 1u64.checked_shl(self.step - 1).unwrap_or(u64::MAX);
        let delay = self.base.saturating_mul(factor).min(self.max);
        if delay < self.max {
            self.step += 1;
        }
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_exit_is_immediate_then_delays_double_up_to_the_maximum() {
        let mut b = Backoff::new(100, 1000, 60_000);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(5)).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn a_long_uptime_makes_the_next_exit_immediate_again() {
        let mut b = Backoff::new(100, 1000, 60_000);
        assert_eq!(b.next_delay(0), 0);
        assert_eq!(b.next_delay(0), 100);
        assert_eq!(b.next_delay(59_999), 200, "short of respawn_reset");
        assert_eq!(b.next_delay(60_000), 0);
        assert_eq!(b.next_delay(0), 100, "the second exit within respawn_reset");
    }

    #[test]
    fn a_first_exit_after_any_uptime_is_immediate() {
        // A server that crashes once after a few seconds (less than respawn_reset)
        // is restarted at once; only a second crash backs off.
        let mut b = Backoff::new(1000, 30_000, 60_000);
        assert_eq!(b.next_delay(4_000), 0);
        assert_eq!(b.next_delay(4_000), 1000);
    }

    #[test]
    fn never_overflows_and_never_spins() {
        let mut b = Backoff::new(0, u64::MAX, u64::MAX);
        assert_eq!(b.next_delay(0), 0);
        assert_eq!(b.next_delay(0), MIN_DELAY_MS);
        for _ in 0..200 {
            b.next_delay(0);
        }
        assert_eq!(b.next_delay(0), u64::MAX);
        let mut c = Backoff::new(500, 100, 1000);
        c.next_delay(0);
        assert_eq!(
            c.next_delay(0),
            500,
            "a maximum below the first delay is raised to it"
        );
    }
}
