//! SOCKS5 (placeholder: being written).
