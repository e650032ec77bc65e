//! The set of backends: an immutable [`Pool`] snapshot behind `ArcSwap`,
//! read without locks on every connection and replaced whole on register,
//! unregister and reload. Live counters live in the `Arc<Backend>`s (their
//! [`Health`]), so a swap keeps them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use balancer_common::MAX_BACKENDS;

use super::{Backend, BackendId, BackendSpec, Census, Health, HealthConfig, Origin, mix64};
use crate::forward::BackendSlot;

/// What the registry refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// A backend of that name is already registered.
    #[error("backend {name:?} is already registered")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// No backend of that name is registered.
    #[error("no backend named {name:?}")]
    UnknownBackend {
        /// The name.
        name: String,
    },
    /// Every counter slot is taken (draining backends keep theirs).
    #[error("all {capacity} backend slots are in use")]
    SlotsExhausted {
        /// How many slots exist.
        capacity: u32,
    },
}

/// One immutable snapshot of the registered backends.
#[derive(Debug, Default)]
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    by_id: HashMap<BackendId, usize>,
    generation: u64,
    panic_mode: bool,
    census: Arc<Census>,
    // Per-backend facts that strategies read for every backend, packed so
    // an O(n) pass does not chase one pointer per backend.
    key_hashes: Vec<u64>,
    weights: Vec<u32>,
}

impl Pool {
    fn new(
        backends: Vec<Arc<Backend>>,
        generation: u64,
        panic_mode: bool,
        census: Arc<Census>,
    ) -> Self {
        let by_id = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id, i))
            .collect();
        let key_hashes = backends.iter().map(|b| b.key_hash()).collect();
        let weights = backends.iter().map(|b| b.weight()).collect();
        Self {
            backends,
            by_id,
            key_hashes,
            weights,
            generation,
            panic_mode,
            census,
        }
    }

    /// Changes whenever any breaker of the registry changes state or a
    /// backend starts draining: an admitted set computed at one version
    /// stays right until the next (except open intervals that elapse with
    /// nobody looking, and half-open trial places, which `admit` checks).
    #[must_use]
    pub fn health_version(&self) -> u64 {
        self.census.version()
    }

    /// The backends, in registration order.
    #[must_use]
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// [`Backend::key_hash`] of every backend, by pool index.
    #[must_use]
    pub fn key_hashes(&self) -> &[u64] {
        &self.key_hashes
    }

    /// [`Backend::weight`] of every backend, by pool index.
    #[must_use]
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Number of backends.
    #[must_use]
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// Changes with every swap, so caches keyed on it notice.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether panic mode is on for this pool.
    #[must_use]
    pub fn panic_mode(&self) -> bool {
        self.panic_mode
    }

    /// Position of a backend by id.
    #[must_use]
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// A backend by name (linear: for operators, not per connection).
    #[must_use]
    pub fn by_name(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.name() == name)
    }
}

/// What [`Registry::replace_all`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaceReport {
    /// New names.
    pub added: Vec<String>,
    /// Names now draining.
    pub removed: Vec<String>,
    /// Names whose tunables changed (counters kept).
    pub updated: Vec<String>,
    /// Names whose address or credentials changed: a new backend (fresh
    /// counters, new slot) replaced the old one, which drains.
    pub replaced: Vec<String>,
}

/// What [`Registry::cleanup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Runtime backends removed for being idle.
    pub expired: Vec<String>,
    /// Drained backends dropped for good; their slots are free again.
    pub reaped: Vec<BackendSlot>,
}

#[derive(Debug)]
struct Writer {
    next_id: u64,
    next_slot: u32,
    free_slots: Vec<u32>,
    draining: Vec<Arc<Backend>>,
    generation: u64,
}

/// The backends of the daemon.
#[derive(Debug)]
pub struct Registry {
    config: HealthConfig,
    pool: ArcSwap<Pool>,
    writer: Mutex<Writer>,
    census: Arc<Census>,
    capacity: u32,
}

impl Registry {
    /// An empty registry with `MAX_BACKENDS` slots.
    #[must_use]
    pub fn new(config: HealthConfig) -> Self {
        Self::with_capacity(config, MAX_BACKENDS)
    }

    /// An empty registry with `capacity` slots.
    #[must_use]
    pub fn with_capacity(config: HealthConfig, capacity: u32) -> Self {
        let panic_mode = config.panic_mode;
        let census = Arc::new(Census::default());
        Self {
            config,
            pool: ArcSwap::from_pointee(Pool::new(Vec::new(), 0, panic_mode, Arc::clone(&census))),
            writer: Mutex::new(Writer {
                next_id: 0,
                next_slot: 0,
                free_slots: Vec::new(),
                draining: Vec::new(),
                generation: 0,
            }),
            census,
            capacity,
        }
    }

    /// The health configuration.
    #[must_use]
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The current snapshot; cheap, lock-free.
    #[must_use]
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, writer: &mut Writer, backends: Vec<Arc<Backend>>) {
        writer.generation += 1;
        self.pool.store(Arc::new(Pool::new(
            backends,
            writer.generation,
            self.config.panic_mode,
            Arc::clone(&self.census),
        )));
    }

    fn create(
        &self,
        writer: &mut Writer,
        spec: BackendSpec,
        origin: Origin,
        now: Instant,
    ) -> Result<Arc<Backend>, RegistryError> {
        let slot = match writer.free_slots.pop() {
            Some(slot) => slot,
            None if writer.next_slot < self.capacity => {
                writer.next_slot += 1;
                writer.next_slot - 1
            }
            None => {
                self.reap(writer);
                writer
                    .free_slots
                    .pop()
                    .ok_or(RegistryError::SlotsExhausted {
                        capacity: self.capacity,
                    })?
            }
        };
        writer.next_id += 1;
        let id = BackendId(writer.next_id);
        let seed = mix64(self.config.seed ^ id.0);
        let health = Arc::new(Health::new(
            &self.config,
            now,
            seed,
            (id, BackendSlot(slot)),
            Arc::clone(&self.census),
        ));
        Ok(Arc::new(Backend::new(
            id,
            BackendSlot(slot),
            origin,
            spec,
            health,
        )))
    }

    /// Adds one backend.
    pub fn register(
        &self,
        spec: BackendSpec,
        origin: Origin,
        now: Instant,
    ) -> Result<Arc<Backend>, RegistryError> {
        let mut writer = self.lock();
        let current = self.pool.load();
        if current.by_name(&spec.name).is_some() {
            return Err(RegistryError::DuplicateName { name: spec.name });
        }
        let backend = self.create(&mut writer, spec, origin, now)?;
        let mut backends = current.backends.clone();
        backends.push(Arc::clone(&backend));
        self.publish(&mut writer, backends);
        Ok(backend)
    }

    /// Removes a backend from selection; it drains while its connections
    /// finish and its slot is reused only after it is gone.
    pub fn unregister(&self, name: &str) -> Result<Arc<Backend>, RegistryError> {
        let mut writer = self.lock();
        let current = self.pool.load();
        let Some(backend) = current.by_name(name).cloned() else {
            return Err(RegistryError::UnknownBackend {
                name: name.to_owned(),
            });
        };
        let backends = current
            .backends
            .iter()
            .filter(|b| b.id != backend.id)
            .cloned()
            .collect();
        backend.mark_draining();
        writer.draining.push(Arc::clone(&backend));
        self.publish(&mut writer, backends);
        Ok(backend)
    }

    /// Makes the configured backends exactly `specs` (a reload). Backends
    /// registered at run time that `specs` does not name are kept.
    pub fn replace_all(
        &self,
        specs: Vec<BackendSpec>,
        now: Instant,
    ) -> Result<ReplaceReport, RegistryError> {
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = specs.iter().find(|s| !seen.insert(s.name.as_str())) {
            return Err(RegistryError::DuplicateName {
                name: dup.name.clone(),
            });
        }
        let mut writer = self.lock();
        let current = self.pool.load_full();
        // Check for slots before creating anything, so a failed reload
        // changes nothing and leaks no slot.
        let needed = specs
            .iter()
            .filter(|spec| {
                current
                    .by_name(&spec.name)
                    .is_none_or(|old| !old.spec().same_identity(spec))
            })
            .count();
        if needed > self.available_slots(&writer) {
            self.reap(&mut writer);
            if needed > self.available_slots(&writer) {
                return Err(RegistryError::SlotsExhausted {
                    capacity: self.capacity,
                });
            }
        }
        let mut report = ReplaceReport::default();
        let mut next = Vec::with_capacity(specs.len());
        let mut retired = Vec::new();
        let mut by_name: HashMap<&str, &Arc<Backend>> =
            current.backends.iter().map(|b| (b.name(), b)).collect();
        for spec in specs {
            match by_name.remove(spec.name.as_str()) {
                Some(old) if *old.spec() == spec && old.origin == Origin::Config => {
                    next.push(Arc::clone(old));
                }
                Some(old) if old.spec().same_identity(&spec) => {
                    report.updated.push(spec.name.clone());
                    next.push(Arc::new(Backend::new(
                        old.id,
                        old.slot,
                        Origin::Config,
                        spec,
                        Arc::clone(old.health()),
                    )));
                }
                Some(old) => {
                    report.replaced.push(spec.name.clone());
                    retired.push(Arc::clone(old));
                    next.push(self.create(&mut writer, spec, Origin::Config, now)?);
                }
                None => {
                    report.added.push(spec.name.clone());
                    next.push(self.create(&mut writer, spec, Origin::Config, now)?);
                }
            }
        }
        for old in current.backends.iter() {
            if by_name.contains_key(old.name()) {
                if old.origin == Origin::Runtime {
                    next.push(Arc::clone(old));
                } else {
                    report.removed.push(old.name().to_owned());
                    retired.push(Arc::clone(old));
                }
            }
        }
        for old in retired {
            old.mark_draining();
            writer.draining.push(old);
        }
        self.publish(&mut writer, next);
        Ok(report)
    }

    /// Removes runtime backends idle for `runtime_idle_timeout` and with no
    /// open connection, then frees the slots of drained backends that
    /// nobody holds any more.
    pub fn cleanup(&self, now: Instant) -> CleanupReport {
        let mut writer = self.lock();
        let current = self.pool.load_full();
        let idle = self.config.runtime_idle_timeout;
        let (expired, kept): (Vec<_>, Vec<_>) = current.backends.iter().cloned().partition(|b| {
            b.origin == Origin::Runtime
                && b.active() == 0
                && now.saturating_duration_since(b.last_activity()) >= idle
        });
        let mut report = CleanupReport {
            expired: expired.iter().map(|b| b.name().to_owned()).collect(),
            reaped: Vec::new(),
        };
        if !expired.is_empty() {
            for backend in expired {
                backend.mark_draining();
                writer.draining.push(backend);
            }
            self.publish(&mut writer, kept);
        }
        drop(current);
        report.reaped = self.reap(&mut writer);
        report
    }

    fn available_slots(&self, writer: &Writer) -> usize {
        let unused = self.capacity.saturating_sub(writer.next_slot);
        writer.free_slots.len() + usize::try_from(unused).unwrap_or(usize::MAX)
    }

    fn reap(&self, writer: &mut Writer) -> Vec<BackendSlot> {
        let mut reaped = Vec::new();
        writer.draining.retain(|backend| {
            // Gone means: no open connection and no other holder (a
            // candidate list in flight, a reloaded copy sharing the slot).
            let gone = backend.active() == 0
                && Arc::strong_count(backend) == 1
                && Arc::strong_count(backend.health()) == 1;
            if gone {
                reaped.push(backend.slot);
            }
            !gone
        });
        writer.free_slots.extend(reaped.iter().map(|slot| slot.0));
        reaped
    }

    /// Backends removed but still finishing connections.
    #[must_use]
    pub fn draining(&self) -> Vec<Arc<Backend>> {
        self.lock().draining.clone()
    }

    /// Status of every backend, draining ones last.
    #[must_use]
    pub fn status(&self, now: Instant) -> Vec<super::BackendStatus> {
        let pool = self.pool();
        let draining = self.draining();
        pool.backends()
            .iter()
            .chain(draining.iter())
            .map(|b| b.status(now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BreakerState, FailureCategory};
    use std::time::Duration;

    fn spec(name: &str) -> BackendSpec {
        BackendSpec::new(name, format!("{name}.test:1080"))
    }

    fn registry() -> Registry {
        Registry::new(HealthConfig::default())
    }

    #[test]
    fn registering_swaps_a_new_snapshot_and_rejects_duplicate_names() {
        let now = crate::clock::now();
        let registry = registry();
        let before = registry.pool();
        registry
            .register(spec("a"), Origin::Config, now)
            .expect("registers");
        assert_eq!(before.len(), 0, "old snapshots are immutable");
        assert_eq!(registry.pool().len(), 1);
        assert_eq!(
            registry.register(spec("a"), Origin::Config, now).err(),
            Some(RegistryError::DuplicateName { name: "a".into() })
        );
    }

    #[test]
    fn slots_are_unique_and_reused_only_after_the_backend_is_gone() {
        let now = crate::clock::now();
        let registry = registry();
        let a = registry
            .register(spec("a"), Origin::Config, now)
            .expect("a");
        let b = registry
            .register(spec("b"), Origin::Config, now)
            .expect("b");
        assert_ne!(a.slot, b.slot);
        let guard = a.connection_opened();
        registry.unregister("a").expect("unregisters");
        assert!(a.is_draining());
        assert_eq!(a.allows(now), crate::backend::Admission::Rejected);
        let a_slot = a.slot;
        drop(a);
        let c = registry
            .register(spec("c"), Origin::Config, now)
            .expect("c");
        assert_ne!(c.slot, a_slot, "still draining: one connection open");
        drop(guard);
        assert_eq!(registry.cleanup(now).reaped, vec![a_slot]);
        let d = registry
            .register(spec("d"), Origin::Config, now)
            .expect("d");
        assert_eq!(d.slot, a_slot);
    }

    #[test]
    fn a_full_registry_reports_exhausted_slots() {
        let now = crate::clock::now();
        let registry = Registry::with_capacity(HealthConfig::default(), 1);
        registry
            .register(spec("a"), Origin::Config, now)
            .expect("a");
        assert_eq!(
            registry.register(spec("b"), Origin::Config, now).err(),
            Some(RegistryError::SlotsExhausted { capacity: 1 })
        );
    }

    #[test]
    fn a_reload_that_needs_too_many_slots_changes_nothing() {
        let now = crate::clock::now();
        let registry = Registry::with_capacity(HealthConfig::default(), 2);
        registry.replace_all(vec![spec("a")], now).expect("loads");
        let result = registry.replace_all(vec![spec("a"), spec("b"), spec("c")], now);
        assert_eq!(result, Err(RegistryError::SlotsExhausted { capacity: 2 }));
        assert_eq!(registry.pool().len(), 1);
        registry
            .replace_all(vec![spec("a"), spec("b")], now)
            .expect("one free slot is enough for one new backend");
    }

    #[test]
    fn replace_all_keeps_counters_of_unchanged_and_retuned_backends() {
        let now = crate::clock::now();
        let registry = registry();
        registry
            .replace_all(vec![spec("a"), spec("b"), spec("c")], now)
            .expect("loads");
        let a = registry.pool().by_name("a").cloned().expect("a");
        a.record(Ok(Duration::from_millis(5)), now);
        let mut heavier = spec("a");
        heavier.weight = 5;
        heavier.engine = crate::forward::BackendEngine::Splice;
        let mut moved = spec("b");
        moved.address = "elsewhere.test:1080".into();
        let report = registry
            .replace_all(vec![heavier, moved, spec("d")], now)
            .expect("reloads");
        assert_eq!(report.updated, vec!["a".to_owned()]);
        assert_eq!(report.replaced, vec!["b".to_owned()]);
        assert_eq!(report.added, vec!["d".to_owned()]);
        assert_eq!(report.removed, vec!["c".to_owned()]);
        let pool = registry.pool();
        let new_a = pool.by_name("a").expect("a");
        assert_eq!(new_a.weight(), 5);
        assert_eq!(new_a.spec().engine, crate::forward::BackendEngine::Splice);
        assert_eq!(new_a.status(now).successes, 1, "counters survive a reload");
        assert_eq!(new_a.slot, a.slot);
        assert_eq!(registry.draining().len(), 2);
    }

    #[test]
    fn idle_runtime_backends_are_cleaned_up_but_configured_ones_stay() {
        let now = crate::clock::now();
        let registry = registry();
        registry
            .register(spec("conf"), Origin::Config, now)
            .expect("conf");
        let busy = registry
            .register(spec("busy"), Origin::Runtime, now)
            .expect("busy");
        registry
            .register(spec("idle"), Origin::Runtime, now)
            .expect("idle");
        let later = now + registry.config().runtime_idle_timeout;
        busy.record(Ok(Duration::from_millis(1)), later - Duration::from_secs(1));
        drop(busy);
        let report = registry.cleanup(later);
        assert_eq!(report.expired, vec!["idle".to_owned()]);
        assert_eq!(report.reaped.len(), 1);
        let names: Vec<_> = registry
            .pool()
            .backends()
            .iter()
            .map(|b| b.name().to_owned())
            .collect();
        assert_eq!(names, vec!["conf".to_owned(), "busy".to_owned()]);
    }

    #[test]
    fn passive_failures_never_eject_the_last_admitted_backend() {
        let now = crate::clock::now();
        let registry = registry();
        let a = registry
            .register(spec("a"), Origin::Config, now)
            .expect("a");
        let b = registry
            .register(spec("b"), Origin::Config, now)
            .expect("b");
        for _ in 0..10 {
            a.record(Err(FailureCategory::ConnectRefused), now);
        }
        assert_eq!(a.state(), BreakerState::Open);
        for _ in 0..10 {
            b.record(Err(FailureCategory::ConnectRefused), now);
        }
        assert_eq!(b.state(), BreakerState::Unknown, "b is the last one left");
        assert_eq!(b.status(now).breaker.consecutive_failures, 10);
    }

    #[test]
    fn failures_are_counted_per_category_and_backend_replies_open_the_breaker() {
        let now = crate::clock::now();
        let registry = registry();
        let a = registry
            .register(spec("a"), Origin::Config, now)
            .expect("a");
        registry
            .register(spec("b"), Origin::Config, now)
            .expect("b");
        for _ in 0..10 {
            a.record(Err(FailureCategory::BackendReply(0x04)), now);
        }
        let status = a.status(now);
        assert_eq!(
            status.failures[FailureCategory::BackendReply(0x04).index()],
            10
        );
        assert_eq!(status.success_rate, Some(0.0));
        assert_eq!(status.breaker.state, BreakerState::Open);
    }
}
