//! The `kpl` command-line tool.

fn main() {}
