//! splice(2) and pipes (placeholder: being written).
