//! The BPF object: loading, attaching, pinning (placeholder: being written).
