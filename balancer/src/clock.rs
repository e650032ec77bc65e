//! The clock (placeholder: being written).
