//! Advice on the engine for each backend, from the sockmap verdict's skb
//! counters. Sockmap pays a verdict, a queueing and a psock-worker send per
//! skb, so behind a backend whose downloads reach it in small skbs splice
//! moves more (see the README, "Which to choose"). Pure: the daemon's task
//! reads the counters, asks here, and logs the answer.

use balancer_common::BackendBytes;

use super::BackendEngine;

/// Downloads whose skbs average less than this are small. In the
/// benchmark, 1,024-byte skbs (microsocks over veth) left sockmap at x0.57
/// of the backend alone where splice made x0.89; with 32 KiB skbs (dante,
/// or microsocks over loopback) sockmap kept up with splice. Where between
/// the two the line lies was not measured: 4 KiB is a judgement.
pub const SMALL_SKB_BYTES: u64 = 4096;

/// A backend is judged only once this much has come down through the
/// verdict, so that a few short answers decide nothing.
pub const JUDGED_AFTER_BYTES: u64 = 64 << 20;

/// The mean bytes per skb of a backend's downloads when they are small
/// enough that splice would serve it better; `None` otherwise, or before
/// [`JUDGED_AFTER_BYTES`] came down.
#[must_use]
pub fn small_downloads(redirected: &BackendBytes) -> Option<u64> {
    if redirected.down < JUDGED_AFTER_BYTES || redirected.down_skbs == 0 {
        return None;
    }
    let mean = redirected.down / redirected.down_skbs;
    (mean < SMALL_SKB_BYTES).then_some(mean)
}

/// [`small_downloads`] for a backend that follows the daemon's engine: one
/// already on `engine: splice` needs no advice, whatever its counters say
/// from before a reload moved it.
#[must_use]
pub fn splice_advised(engine: BackendEngine, redirected: &BackendBytes) -> Option<u64> {
    match engine {
        BackendEngine::Auto => small_downloads(redirected),
        BackendEngine::Splice => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(bytes: u64, skbs: u64) -> BackendBytes {
        BackendBytes {
            down: bytes,
            down_skbs: skbs,
            // Uploads are the client's doing: they never count.
            up: bytes,
            up_skbs: bytes,
        }
    }

    #[test]
    fn downloads_in_one_kib_skbs_are_small_once_enough_came_down() {
        let mib = 1 << 20;
        assert_eq!(small_downloads(&down(64 * mib, 64 * 1024)), Some(1024));
        assert_eq!(small_downloads(&down(64 * mib - 1, 64 * 1024)), None);
    }

    #[test]
    fn downloads_in_large_skbs_or_none_at_all_are_fine() {
        let mib = 1 << 20;
        assert_eq!(small_downloads(&down(64 * mib, 2048)), None, "32 KiB each");
        assert_eq!(
            small_downloads(&down(64 * mib, 16 * 1024)),
            None,
            "exactly 4 KiB"
        );
        assert_eq!(small_downloads(&down(0, 0)), None);
        assert_eq!(small_downloads(&BackendBytes::default()), None);
    }

    #[test]
    fn a_backend_already_on_splice_is_not_advised_whatever_its_counters() {
        let mib = 1 << 20;
        let small = down(64 * mib, 64 * 1024);
        assert_eq!(splice_advised(BackendEngine::Auto, &small), Some(1024));
        assert_eq!(splice_advised(BackendEngine::Splice, &small), None);
    }
}
