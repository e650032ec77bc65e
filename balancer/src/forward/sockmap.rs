//! The `sockmap engine (placeholder: being written).

use super::{BackendSlot, ByteCount, ForwardOptions, Pair, PairSummary};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SockmapError {
    #[error("not implemented yet")]
    NotImplemented,
}

#[derive(Debug)]
pub struct SockmapEngine {
    _options: ForwardOptions,
}

impl SockmapEngine {
    pub async fn open(options: ForwardOptions) -> Result<Self, SockmapError> {
        Ok(Self { _options: options })
    }

    pub async fn forward(
        &self,
        _pair: Pair,
        _cancel: &CancellationToken,
    ) -> Result<PairSummary, SockmapError> {
        Err(SockmapError::NotImplemented)
    }

    pub fn backend_bytes(&self, _slot: BackendSlot) -> ByteCount {
        ByteCount::default()
    }
}
