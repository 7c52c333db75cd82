//! MessagePack-RPC (`MsgPack:1`): the framer and the session engine.

mod fast;
pub mod framer;
mod read;
pub mod session;
pub mod write;

pub use framer::{FrameError, Framer, Limits};
pub use session::{Event, Request, Session, Stream};

#[cfg(test)]
mod tests;
