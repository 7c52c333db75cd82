//! Protobuf (`ProtoBuf:1`, the Go PDK): the protocol messages and the session engine.

pub mod messages;
pub mod session;

pub use session::{Closed, Event, PREFIX, Request, Session, Stream};

use super::methods;

/// The method-table index of a PDK method name sent over Protobuf, or
/// [`methods::UNKNOWN`] when the name is not a method of the Protobuf service
/// (MessagePack-only methods included: go-pdk never sends them, and their
/// values have no Protobuf type).
pub fn method_index(name: &[u8]) -> u16 {
    let index = methods::index_of(name);
    match methods::get(index) {
        Some(m) if m.pb.is_some() => index,
        _ => methods::UNKNOWN,
    }
}

#[cfg(test)]
mod tests;
