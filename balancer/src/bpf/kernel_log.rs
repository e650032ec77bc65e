//! The BPF program's own log lines (aya-log), read from its ring buffer and
//! written to the daemon's log under the target `balancer::bpf::kernel`.
//! Only with `forwarding.bpf_log`: otherwise the loader switches the
//! program's log statements off and nothing here runs.

use aya_log::EbpfLogger;

/// Turns aya-log's `log` records into `tracing` events.
#[derive(Clone, Copy, Debug)]
pub struct ToTracing;

/// The program's `AYA_LOG_LEVEL` when `forwarding.bpf_log` is on:
/// `aya_log_common::Level::Trace`, every statement, per-skb ones included
/// (`RUST_LOG` filters them here).
pub const ON: u8 = 5;
/// No statement: the verifier removes them all.
pub const OFF: u8 = 0;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "balancer::bpf::kernel", "{message}"),
            log::Level::Warn => tracing::warn!(target: "balancer::bpf::kernel", "{message}"),
            log::Level::Info => tracing::info!(target: "balancer::bpf::kernel", "{message}"),
            log::Level::Debug => tracing::debug!(target: "balancer::bpf::kernel", "{message}"),
            log::Level::Trace => tracing::trace!(target: "balancer::bpf::kernel", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The program's ring buffer of log records.
pub type KernelLogger = EbpfLogger<ToTracing>;

/// Forwards records until the task is aborted (the engine's drop).
pub async fn forward(logger: KernelLogger) {
    let error = super::ring::drain_when_readable(logger, |logger| logger.flush()).await;
    tracing::warn!(%error, "cannot watch the BPF log ring buffer; forwarding.bpf_log has no effect");
}
