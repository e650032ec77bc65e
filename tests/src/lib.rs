//! Fixtures for the integration tests (placeholder: being written).
