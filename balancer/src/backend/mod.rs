//! Backends (placeholder: being written).
