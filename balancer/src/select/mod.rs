//! Selection (placeholder: being written).
