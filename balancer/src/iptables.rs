//! iptables rules (placeholder: being written).
