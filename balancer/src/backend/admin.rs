//! What an operator asked of a backend through the control API, kept apart
//! from the breaker: the breaker says whether a backend *can* take traffic,
//! this says whether it *may*. Probes keep feeding the breaker of a disabled
//! backend (so its state is fresh when it is enabled again) but never
//! readmit it.

use std::sync::atomic::{AtomicU8, Ordering};

/// An operator's override of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdminState {
    /// Selection as usual.
    #[default]
    Enabled,
    /// No new connections until enabled again.
    Disabled,
    /// No new connections; the open ones finish. Unlike unregistering, the
    /// backend keeps its name and slot and can be enabled again.
    Draining,
}

impl AdminState {
    /// The lower-case label of the API and logs.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Draining => "draining",
        }
    }

    /// Whether selection may offer the backend.
    #[must_use]
    pub fn admits(self) -> bool {
        self == Self::Enabled
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Enabled => 0,
            Self::Disabled => 1,
            Self::Draining => 2,
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Disabled,
            2 => Self::Draining,
            _ => Self::Enabled,
        }
    }
}

/// An [`AdminState`] readable without a lock on every selection.
#[derive(Debug, Default)]
pub(crate) struct AdminCell(AtomicU8);

impl AdminCell {
    pub(crate) fn get(&self) -> AdminState {
        AdminState::from_u8(self.0.load(Ordering::Relaxed))
    }

    /// Sets `state`, returning the previous one.
    pub(crate) fn swap(&self, state: AdminState) -> AdminState {
        AdminState::from_u8(self.0.swap(state.to_u8(), Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_round_trips_every_state_and_starts_enabled() {
        let cell = AdminCell::default();
        assert_eq!(cell.get(), AdminState::Enabled);
        for state in [
            AdminState::Disabled,
            AdminState::Draining,
            AdminState::Enabled,
        ] {
            let before = cell.get();
            assert_eq!(cell.swap(state), before);
            assert_eq!(cell.get(), state);
        }
        assert!(AdminState::Enabled.admits());
        assert!(!AdminState::Disabled.admits());
        assert!(!AdminState::Draining.admits());
    }
}
