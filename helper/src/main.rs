//! Placeholder: the process issue fills this in.
fn main() {}
