//! Wires the command line to the library (placeholder: being written).

fn main() {}
