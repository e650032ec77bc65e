//! The `splice(2)` engine (placeholder: being written).

use super::{BackendSlot, ByteCount, ForwardOptions, Pair, PairSummary};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("not implemented yet")]
    NotImplemented,
}

#[derive(Debug)]
pub struct SpliceEngine {
    _options: ForwardOptions,
}

impl SpliceEngine {
    pub fn new(options: ForwardOptions) -> Result<Self, SpliceError> {
        Ok(Self { _options: options })
    }

    pub async fn forward(
        &self,
        _pair: Pair,
        _cancel: &CancellationToken,
    ) -> Result<PairSummary, SpliceError> {
        Err(SpliceError::NotImplemented)
    }

    pub fn backend_bytes(&self, _slot: BackendSlot) -> ByteCount {
        ByteCount::default()
    }
}
