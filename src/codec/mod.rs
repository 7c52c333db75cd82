//! Sans-I/O protocol engines: MessagePack-RPC and length-prefixed Protobuf, and
//! the PDK method table both use.

pub mod methods;
pub mod msgpack;
pub mod protobuf;
mod received;
