//! The received bytes of one stream, kept alike by both engines: what came off
//! the socket, how much of it the reported messages used, and how much memory
//! a stream keeps across connection checkouts.

use std::ops::Range;

/// Capacity kept across resets; a larger buffer (one big message) is released.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Received bytes; `buf[..consumed]` belongs to messages already reported.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) buf: Vec<u8>,
    pub(crate) consumed: usize,
}

impl Received {
    /// Drops every byte, keeping at most [`KEEP_CAPACITY`].
    pub(crate) fn reset(&mut self) {
        reset_buf(&mut self.buf);
        self.consumed = 0;
    }

    /// Drops the bytes of the messages already reported.
    pub(crate) fn compact(&mut self) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    /// Appends `bytes` after dropping the reported ones.
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes a span of a reported event refers to.
    pub(crate) fn bytes(&self, span: &Range<usize>) -> &[u8] {
        &self.buf[span.clone()]
    }

    /// How many bytes beyond the reported messages are buffered.
    pub(crate) fn unread(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// Whether bytes beyond the reported messages are buffered.
    pub(crate) fn has_unread(&self) -> bool {
        self.unread() > 0
    }
}

/// Empties `buf` and shrinks it back to [`KEEP_CAPACITY`] when one big message
/// grew it (`shrink_to` never goes below the length, so the clear comes first).
pub(crate) fn reset_buf(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > KEEP_CAPACITY {
        buf.shrink_to(KEEP_CAPACITY);
    }
}
