//! The requests a stream target sends in turn, chosen by the fuzz input.

/// Two bits of `bits` per request pick its kind (0..=3) for the first
/// `scripted` requests; every later request is kind 1.
pub struct Script {
    bits: u32,
    scripted: u32,
    sent: u32,
}

impl Script {
    pub fn new(bits: u32, scripted: u32) -> Self {
        Script {
            bits,
            scripted,
            sent: 0,
        }
    }

    /// The kind of the next request.
    pub fn next_kind(&mut self) -> u32 {
        let kind = if self.sent < self.scripted {
            (self.bits >> (2 * self.sent)) & 3
        } else {
            1
        };
        self.sent += 1;
        kind
    }
}
