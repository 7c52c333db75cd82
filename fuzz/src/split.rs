//! Splitting a byte stream into reads the way a socket might.

/// Chunk lengths for `len` bytes from `seed`: mostly short reads (1..=16 bytes),
/// sometimes one byte, sometimes a long read, deterministic for a given seed.
pub fn chunks(seed: u64, len: usize) -> Vec<usize> {
    let mut state = seed | 1;
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = match state % 8 {
            0 => 1,
            1 => 64 + (state >> 8) as usize % 1024,
            _ => 1 + (state >> 8) as usize % 16,
        };
        let n = n.min(left);
        out.push(n);
        left -= n;
    }
    out
}
