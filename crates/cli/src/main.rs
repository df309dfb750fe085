//! The `wafleet` command line.

fn main() {}
