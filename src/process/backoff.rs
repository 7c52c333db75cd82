//! Respawn delays: `respawn_delay` first, doubling up to `respawn_delay_max`; a
//! server that stayed up for `respawn_reset` starts again from the first step.

/// Smallest delay used even if configured lower, so a crash loop stays cheap.
pub const MIN_DELAY_MS: u64 = 10;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: u64,
    max: u64,
    reset: u64,
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

    /// The delay before the next spawn, for a server that ran `uptime_ms` before exiting.
    pub fn next_delay(&mut self, uptime_ms: u64) -> u64 {
        if uptime_ms >= self.reset {
            self.step = 0;
        }
        let factor = 1u64.checked_shl(self.step).unwrap_or(u64::MAX);
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
    fn doubles_up_to_the_maximum() {
        let mut b = Backoff::new(100, 1000, 60_000);
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay(5)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn a_long_uptime_resets_to_the_first_step() {
        let mut b = Backoff::new(100, 1000, 60_000);
        assert_eq!(b.next_delay(0), 100);
        assert_eq!(b.next_delay(0), 200);
        assert_eq!(b.next_delay(59_999), 400);
        assert_eq!(b.next_delay(60_000), 100);
        assert_eq!(b.next_delay(0), 200);
    }

    #[test]
    fn never_overflows_and_never_spins() {
        let mut b = Backoff::new(0, u64::MAX, u64::MAX);
        assert_eq!(b.next_delay(0), MIN_DELAY_MS);
        for _ in 0..200 {
            b.next_delay(0);
        }
        assert_eq!(b.next_delay(0), u64::MAX);
        let mut c = Backoff::new(500, 100, 1000);
        assert_eq!(
            c.next_delay(0),
            500,
            "a maximum below the first delay is raised to it"
        );
    }
}
