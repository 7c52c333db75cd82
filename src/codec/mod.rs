//! Sans-I/O protocol engines: MessagePack-RPC and length-prefixed Protobuf.
