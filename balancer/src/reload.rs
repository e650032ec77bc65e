//! The reload diff (SIGHUP): compares the running config with a newly read
//! one and says what to apply live and what only a restart can change. Pure:
//! no I/O, no clock; the daemon applies the [`ReloadPlan`] and logs it.
//!
//! Applied live: the backend list (the registry drains removed backends),
//! `balancing.*` (each listener's selector is rebuilt, which forgets sticky
//! clients and cached sets) and the prober's settings (`health.probe.*`,
//! `health.passive_monitoring`: the prober restarts). Everything the daemon
//! built its sockets, engine or backend health state from needs a restart.

use crate::{
    backend::BackendSpec,
    config::{BalancingConfig, Config, HealthConfig},
};

/// What a reload does.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadPlan {
    /// Every configured backend of the new config, for
    /// [`crate::backend::Registry::replace_all`].
    pub backends: Vec<BackendSpec>,
    /// The new `balancing` section when it changed: rebuild the selectors.
    pub balancing: Option<BalancingConfig>,
    /// The new `health` section when the prober's settings changed: restart
    /// (or start, or stop) the prober with it.
    pub probe: Option<HealthConfig>,
    /// Keys applied live, for the log.
    pub applied: Vec<String>,
    /// Keys that differ but keep their running value until a restart.
    pub needs_restart: Vec<String>,
    /// Keys the daemon does not read (`balancer iptables` does): taken as
    /// they are, the operator has to re-run that command.
    pub iptables_only: Vec<String>,
    /// The config in force after the reload: the new one with every
    /// `needs_restart` key at its running value, so that the next reload
    /// compares against what really runs.
    pub effective: Config,
}

/// Compares `running` with `new` (both validated).
#[must_use]
pub fn plan(running: &Config, new: &Config) -> ReloadPlan {
    let (old_fw, new_fw) = (&running.forwarding, &new.forwarding);
    let (old_h, new_h) = (&running.health, &new.health);
    let (old_b, new_b) = (&running.balancing, &new.balancing);
    // The health keys here are handed to every backend's breaker and window
    // when the registry creates it; changing them live would mean
    // rebuilding health state that the reload promises to keep.
    let restart_keys = [
        ("instance", running.instance != new.instance),
        ("listeners", running.listeners != new.listeners),
        ("forwarding.engine", old_fw.engine != new_fw.engine),
        (
            "forwarding.connect_timeout",
            old_fw.connect_timeout != new_fw.connect_timeout,
        ),
        (
            "forwarding.handshake_timeout",
            old_fw.handshake_timeout != new_fw.handshake_timeout,
        ),
        (
            "forwarding.idle_timeout",
            old_fw.idle_timeout != new_fw.idle_timeout,
        ),
        (
            "forwarding.socket_buffer",
            old_fw.socket_buffer != new_fw.socket_buffer,
        ),
        ("forwarding.mark", old_fw.mark != new_fw.mark),
        ("forwarding.bpf_log", old_fw.bpf_log != new_fw.bpf_log),
        (
            "forwarding.offload_after_bytes",
            old_fw.offload_after_bytes != new_fw.offload_after_bytes,
        ),
        (
            "forwarding.offload_after_time",
            old_fw.offload_after_time != new_fw.offload_after_time,
        ),
        (
            "forwarding.drain_timeout",
            old_fw.drain_timeout != new_fw.drain_timeout,
        ),
        (
            "forwarding.kernel_queue_limit",
            old_fw.kernel_queue_limit != new_fw.kernel_queue_limit,
        ),
        (
            "transparent.manage_rules",
            running.transparent.manage_rules != new.transparent.manage_rules,
        ),
        (
            "metrics.listen",
            running.metrics.listen != new.metrics.listen,
        ),
        (
            "health.circuit_threshold",
            old_h.circuit_threshold != new_h.circuit_threshold,
        ),
        (
            "health.recovery_interval",
            old_h.recovery_interval != new_h.recovery_interval,
        ),
        (
            "health.max_recovery_interval",
            old_h.max_recovery_interval != new_h.max_recovery_interval,
        ),
        (
            "health.metrics_window_size",
            old_h.metrics_window_size != new_h.metrics_window_size,
        ),
        ("health.panic_mode", old_h.panic_mode != new_h.panic_mode),
        (
            "health.runtime_idle_timeout",
            old_h.runtime_idle_timeout != new_h.runtime_idle_timeout,
        ),
    ];
    let live_keys = [
        ("backends", running.backends != new.backends),
        ("balancing.strategy", old_b.strategy != new_b.strategy),
        (
            "balancing.max_attempts",
            old_b.max_attempts != new_b.max_attempts,
        ),
        (
            "balancing.max_active_backends",
            old_b.max_active_backends != new_b.max_active_backends,
        ),
        (
            "balancing.max_latency_ms",
            old_b.max_latency_ms != new_b.max_latency_ms,
        ),
        (
            "balancing.sticky_sessions",
            old_b.sticky_sessions != new_b.sticky_sessions,
        ),
        ("health.probe", old_h.probe != new_h.probe),
        (
            "health.passive_monitoring",
            old_h.passive_monitoring != new_h.passive_monitoring,
        ),
    ];
    let changed = |keys: &[(&str, bool)]| -> Vec<String> {
        keys.iter()
            .filter(|(_, differs)| *differs)
            .map(|(key, _)| (*key).to_owned())
            .collect()
    };
    let needs_restart = changed(&restart_keys);
    let applied = changed(&live_keys);
    let mut iptables_only = Vec::new();

    if running.transparent.tproxy_mark != new.transparent.tproxy_mark {
        iptables_only.push("transparent.tproxy_mark".to_owned());
    }
    if running.transparent.route_table != new.transparent.route_table {
        iptables_only.push("transparent.route_table".to_owned());
    }

    let probe_changed =
        old_h.probe != new_h.probe || old_h.passive_monitoring != new_h.passive_monitoring;
    let mut effective = new.clone();
    effective.instance.clone_from(&running.instance);
    effective.listeners.clone_from(&running.listeners);
    effective.forwarding = running.forwarding.clone();
    effective.metrics = running.metrics.clone();
    effective.health = HealthConfig {
        probe: new_h.probe.clone(),
        passive_monitoring: new_h.passive_monitoring,
        ..running.health.clone()
    };

    ReloadPlan {
        backends: backend_specs(new),
        balancing: (old_b != new_b).then(|| new_b.clone()),
        probe: probe_changed.then(|| effective.health.clone()),
        applied,
        needs_restart,
        iptables_only,
        effective,
    }
}

/// The backends the registry holds for `config`, port ranges expanded; the
/// same at start and at reload so unchanged backends compare equal.
#[must_use]
pub fn backend_specs(config: &Config) -> Vec<BackendSpec> {
    config
        .expanded_backends()
        .into_iter()
        .map(|backend| BackendSpec {
            address: backend.address(),
            name: backend.name,
            username: backend.username,
            password: backend.password.map(|secret| secret.expose().to_owned()),
            weight: backend.weight,
            scope: backend.scope,
            backup: backend.backup,
            metadata: backend.metadata,
            engine: backend.engine,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Engine, ListenerConfig, Strategy};

    fn config(yaml_backends: &str) -> Config {
        Config::parse(&format!(
            "listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:1080\" }}\n\
             backends:\n{yaml_backends}"
        ))
        .expect("valid config")
    }

    fn names(plan: &ReloadPlan) -> Vec<&str> {
        plan.backends.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let running = config("  - address: 10.0.0.1:1080\n");
        let plan = plan(&running, &running.clone());
        assert!(plan.applied.is_empty(), "{:?}", plan.applied);
        assert!(plan.needs_restart.is_empty(), "{:?}", plan.needs_restart);
        assert!(plan.balancing.is_none() && plan.probe.is_none());
        assert_eq!(plan.effective, running);
        assert_eq!(names(&plan), ["10.0.0.1:1080"]);
    }

    #[test]
    fn a_new_backend_list_is_applied_live_with_ranges_expanded() {
        let running = config("  - { address: 10.0.0.1:1080, name: a }\n");
        let new = config(
            "  - { address: 10.0.0.1:1080, name: a }\n  - { address: 10.0.0.2:1081-1082, name: c }\n",
        );
        let plan = plan(&running, &new);
        assert_eq!(plan.applied, ["backends"]);
        assert!(plan.needs_restart.is_empty());
        assert_eq!(names(&plan), ["a", "c-1", "c-2"]);
        assert_eq!(plan.effective, new);
    }

    #[test]
    fn listeners_engine_forwarding_metrics_instance_and_breaker_settings_need_a_restart() {
        let running = config("  - address: 10.0.0.1:1080\n");
        let mut new = running.clone();
        new.instance = "other".to_owned();
        new.listeners = vec![ListenerConfig::socks5(
            "socks",
            "127.0.0.1:2080".parse().expect("addr"),
        )];
        new.forwarding.engine = Engine::Splice;
        new.forwarding.mark = 7;
        new.metrics.listen = None;
        new.health.circuit_threshold = 9;
        new.health.panic_mode = false;
        let plan = plan(&running, &new);
        assert_eq!(
            plan.needs_restart,
            [
                "instance",
                "listeners",
                "forwarding.engine",
                "forwarding.mark",
                "metrics.listen",
                "health.circuit_threshold",
                "health.panic_mode",
            ]
        );
        assert!(plan.applied.is_empty());
        assert_eq!(
            plan.effective, running,
            "what needs a restart keeps running as it was"
        );
    }

    #[test]
    fn balancing_and_probe_settings_are_applied_live() {
        let running = config("  - address: 10.0.0.1:1080\n");
        let mut new = running.clone();
        new.balancing.strategy = Strategy::RoundRobin;
        new.balancing.max_attempts = 1;
        new.health.probe.enabled = false;
        new.health.circuit_threshold = 5;
        let plan = plan(&running, &new);
        assert_eq!(
            plan.applied,
            [
                "balancing.strategy",
                "balancing.max_attempts",
                "health.probe"
            ]
        );
        assert_eq!(plan.needs_restart, ["health.circuit_threshold"]);
        assert_eq!(plan.balancing, Some(new.balancing.clone()));
        let probe = plan.probe.expect("prober settings changed");
        assert!(!probe.probe.enabled);
        assert_eq!(probe.circuit_threshold, running.health.circuit_threshold);
        assert_eq!(plan.effective.health, probe);
    }

    #[test]
    fn transparent_settings_are_reported_for_iptables() {
        let running = config("  - address: 10.0.0.1:1080\n");
        let mut new = running.clone();
        new.transparent.route_table = 101;
        let plan = plan(&running, &new);
        assert_eq!(plan.iptables_only, ["transparent.route_table"]);
        assert!(plan.needs_restart.is_empty() && plan.applied.is_empty());
        assert_eq!(plan.effective, new);
    }
}
