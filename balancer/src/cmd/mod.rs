//! Subcommands (placeholder: being written).
