//! The BPF object of the sockmap engine: loads the verdict program embedded at
//! build time, attaches it to the `SOCKETS` sockhash, pins the maps for
//! `balancer stats`, and offers typed access to the maps: the mmap-able
//! `BACKEND_STATS` / `DAEMON_STATS` mapped into the daemon ([`MappedWords`])
//! and every pinned counter map opened by `balancer stats`
//! ([`PinnedStats`]). The only module that imports aya.
//!
//! Minimum kernel: Linux 5.15 (`stream_verdict` without a stream parser).

pub mod kernel_log;
pub mod ring;

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf, SockHash},
    programs::{ProgramError, SkSkb},
};
use balancer_common::{
    BACKEND_STAT_WORDS, BackendBytes, BackendStats, DAEMON_STAT_WORDS, DaemonStats, Global,
    MAX_BACKENDS, PeerInfo, map, prog,
};

/// The object built from `balancer-ebpf` (aya-build names it after the bin).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

/// How many verifier log lines an error keeps (the end says what failed).
const VERIFIER_LOG_LINES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "missing privilege to {action} (run as root or with CAP_BPF and CAP_NET_ADMIN): {source}"
    )]
    Permission {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "kernel lacks a feature to {action} (sockmap needs Linux >= 5.15 with CONFIG_BPF_STREAM_PARSER): {source}"
    )]
    KernelFeature {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the verifier rejected {program} ({source}); log ends with:\n{log_excerpt}")]
    Verifier {
        program: &'static str,
        log_excerpt: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the BPF object")]
    Load(#[source] EbpfError),
    #[error("cannot read the BPF program's log (forwarding.bpf_log)")]
    Log(#[source] Box<aya_log::Error>),
    #[error("the BPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("cannot {action} {program}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map} has an unexpected type or layout")]
    MapType {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot {action} pin {path}")]
    Pin {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} in map {map}")]
    MapOp {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot map {map} into memory: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "missing privilege to open the pinned map {} (run as root or with CAP_BPF): {source}",
        path.display()
    )]
    PinPermission {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "missing privilege to look for pinned maps in {} (run as root or with CAP_BPF): {source}",
        path.display()
    )]
    PinLookup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the pinned map {}", path.display())]
    OpenPin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("the kernel refused socket {cookie} for the sockhash (not an established TCP socket)")]
    SocketRejected {
        cookie: u64,
        #[source]
        source: io::Error,
    },
}

/// The loaded object with its program attached and its maps open.
pub struct Bpf {
    sockets: Mutex<SockHash<MapData, u64>>,
    targets: Mutex<SockHash<MapData, u64>>,
    peers: Mutex<HashMap<MapData, u64, PeerInfo>>,
    backend_bytes: Mutex<PerCpuArray<MapData, BackendBytes>>,
    global: PerCpuArray<MapData, Global>,
    backend_stats: Arc<MappedWords>,
    daemon_stats: Arc<MappedWords>,
    /// Keeps the program loaded and its attachment alive.
    _ebpf: Ebpf,
    pins: Option<Pins>,
    /// The program's log records, until the engine takes them.
    logger: Option<kernel_log::KernelLogger>,
    /// The verdict's queue checks, until the engine takes them.
    queue_checks: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpf")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

impl Bpf {
    /// Loads the object, attaches the verdict to `SOCKETS`, and pins the maps
    /// under `pin_dir` (replacing pins a crashed run left behind).
    ///
    /// `log` lets the program's own log statements run (see [`kernel_log`]);
    /// without it the verifier removes them.
    pub fn load(pin_dir: Option<&Path>, log: bool) -> Result<Self, BpfError> {
        let level = if log { kernel_log::ON } else { kernel_log::OFF };
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, true)
            .load(OBJECT)
            .map_err(classify_load)?;
        let pins = pin_dir.map(|dir| Pins::create(dir, &ebpf)).transpose()?;

        let program = verdict(&mut ebpf)?;
        program.load().map_err(classify_program_load)?;

        let sockets: SockHash<MapData, u64> = take_map(&mut ebpf, map::SOCKETS)?;
        let program = verdict(&mut ebpf)?;
        program
            .attach(sockets.fd())
            .map_err(|source| match source {
                ProgramError::SyscallError(err) => {
                    classify_io("attach the verdict to the sockhash", err.io_error)
                }
                source => BpfError::Program {
                    action: "attach",
                    program: prog::VERDICT,
                    source,
                },
            })?;
        // Loading parsed the kernel's BTF, ~15 MiB of allocations freed by
        // now, which glibc would keep resident for the daemon's whole life.
        crate::sys::memory::release_free_heap();

        let logger = if log {
            Some(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, kernel_log::ToTracing)
                    .map_err(|source| BpfError::Log(Box::new(source)))?,
            )
        } else {
            None
        };

        Ok(Self {
            logger,
            queue_checks: Some(take_map(&mut ebpf, map::QUEUE_CHECKS)?),
            sockets: Mutex::new(sockets),
            targets: Mutex::new(take_map(&mut ebpf, map::TARGETS)?),
            peers: Mutex::new(take_map(&mut ebpf, map::PEERS)?),
            backend_bytes: Mutex::new(take_map(&mut ebpf, map::BACKEND_BYTES)?),
            global: take_map(&mut ebpf, map::GLOBAL)?,
            backend_stats: Arc::new(take_words(
                &mut ebpf,
                map::BACKEND_STATS,
                words_of::<BackendStats>(MAX_BACKENDS),
            )?),
            daemon_stats: Arc::new(take_words(
                &mut ebpf,
                map::DAEMON_STATS,
                words_of::<DaemonStats>(1),
            )?),
            _ebpf: ebpf,
            pins,
        })
    }

    /// The reader of the program's log records, when loaded with `log`
    /// (once; the caller forwards them with [`kernel_log::forward`]).
    pub fn take_logger(&mut self) -> Option<kernel_log::KernelLogger> {
        self.logger.take()
    }

    /// The ring of `QUEUE_CHECKS` (once; see
    /// [`balancer_common::QUEUE_CHECK_BYTES`]).
    pub fn take_queue_checks(&mut self) -> Option<RingBuf<MapData>> {
        self.queue_checks.take()
    }

    /// Writes the `PEERS` entry of `cookie`.
    pub fn set_peer(&self, cookie: u64, info: PeerInfo) -> Result<(), BpfError> {
        lock(&self.peers)
            .insert(cookie, info, 0)
            .map_err(|source| BpfError::MapOp {
                op: "insert",
                map: map::PEERS,
                source,
            })
    }

    /// Reads the `PEERS` entry of `cookie`, if there is one.
    pub fn peer(&self, cookie: u64) -> Result<Option<PeerInfo>, BpfError> {
        match lock(&self.peers).get(&cookie, 0) {
            Ok(info) => Ok(Some(info)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(BpfError::MapOp {
                op: "look up",
                map: map::PEERS,
                source,
            }),
        }
    }

    /// Removes the `PEERS` entry of `cookie` (absent is fine).
    pub fn remove_peer(&self, cookie: u64) -> Result<(), BpfError> {
        ignore_absent(lock(&self.peers).remove(&cookie), "remove", map::PEERS)
    }

    /// Adds the socket `fd` to `which` under `cookie`.
    pub fn insert_socket(
        &self,
        which: SocketMap,
        cookie: u64,
        fd: impl std::os::fd::AsRawFd,
    ) -> Result<(), BpfError> {
        lock(self.socket_map(which))
            .insert(cookie, fd, 0)
            .map_err(|source| match source {
                MapError::SyscallError(err)
                    if err.io_error.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                {
                    BpfError::SocketRejected {
                        cookie,
                        source: err.io_error,
                    }
                }
                source => BpfError::MapOp {
                    op: "insert",
                    map: which.name(),
                    source,
                },
            })
    }

    /// Removes `cookie` from `which` (absent is fine: the kernel removes a
    /// socket from every sockhash by itself when it is closed).
    pub fn remove_socket(&self, which: SocketMap, cookie: u64) -> Result<(), BpfError> {
        ignore_absent(
            lock(self.socket_map(which)).remove(&cookie),
            "remove",
            which.name(),
        )
    }

    fn socket_map(&self, which: SocketMap) -> &Mutex<SockHash<MapData, u64>> {
        match which {
            SocketMap::Sockets => &self.sockets,
            SocketMap::Targets => &self.targets,
        }
    }

    /// Entries in `PEERS`, `SOCKETS` and `TARGETS` (walks the maps: tests
    /// and stats only).
    pub fn entries(&self) -> Result<MapEntries, BpfError> {
        let peers = lock(&self.peers).keys().count();
        let sockets = lock(&self.sockets).keys().count();
        let targets = lock(&self.targets).keys().count();
        Ok(MapEntries {
            peers,
            sockets,
            targets,
        })
    }

    /// `BACKEND_BYTES[slot]` summed over the CPUs; zero for a slot outside.
    pub fn backend_bytes(&self, slot: u32) -> Result<BackendBytes, BpfError> {
        sum_bytes(&lock(&self.backend_bytes), slot)
    }

    /// Zeroes `BACKEND_BYTES[slot]` on every CPU. While a spliced pair of
    /// the slot moves bytes, the verdict's per-CPU adds race the write: a
    /// few bytes forwarded during the reset may be lost or kept.
    pub fn clear_backend_bytes(&self, slot: u32) -> Result<(), BpfError> {
        let op = |op| {
            move |source| BpfError::MapOp {
                op,
                map: map::BACKEND_BYTES,
                source,
            }
        };
        let mut counters = lock(&self.backend_bytes);
        let cpus = counters.get(&slot, 0).map_err(op("read"))?.len();
        let zeros = PerCpuValues::try_from(vec![BackendBytes::default(); cpus])
            .map_err(|error| op("zero")(MapError::from(error)))?;
        counters.set(slot, zeros, 0).map_err(op("zero"))
    }

    /// `GLOBAL` summed over the CPUs.
    pub fn global(&self) -> Result<Global, BpfError> {
        let per_cpu = self.global.get(&0, 0).map_err(|source| BpfError::MapOp {
            op: "read",
            map: map::GLOBAL,
            source,
        })?;
        Ok(per_cpu.iter().fold(Global::default(), |sum, cpu| Global {
            redirected_skbs: sum.redirected_skbs.wrapping_add(cpu.redirected_skbs),
            no_peer: sum.no_peer.wrapping_add(cpu.no_peer),
            redirect_failed: sum.redirect_failed.wrapping_add(cpu.redirect_failed),
            queue_checks_lost: sum.queue_checks_lost.wrapping_add(cpu.queue_checks_lost),
        }))
    }
}

impl Bpf {
    /// `BACKEND_STATS` mapped writable: [`BACKEND_STAT_WORDS`] words per
    /// slot, for the daemon's per-backend counters.
    #[must_use]
    pub fn backend_stats(&self) -> Arc<MappedWords> {
        Arc::clone(&self.backend_stats)
    }

    /// `DAEMON_STATS` mapped writable: [`DAEMON_STAT_WORDS`] words.
    #[must_use]
    pub fn daemon_stats(&self) -> Arc<MappedWords> {
        Arc::clone(&self.daemon_stats)
    }
}

/// Words of `u64` in `entries` values of `T`.
const fn words_of<T>(entries: u32) -> usize {
    std::mem::size_of::<T>() / 8 * entries as usize
}

/// A `BPF_F_MMAPABLE` array map mapped into this process (`MAP_SHARED`):
/// loads and stores are plain memory accesses, visible to every other
/// mapping of the map, with no syscall. Viewed as `u64` atomics, the only
/// way the daemon writes it.
#[derive(Debug)]
pub struct MappedWords {
    start: NonNull<AtomicU64>,
    words: usize,
    bytes: usize,
    /// The map stays referenced by the mapping itself; the handle is kept
    /// so the map's identity is visible while debugging.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory accessed only through
// `AtomicU64`, which is Sync; the pointer is never reassigned.
unsafe impl Send for MappedWords {}
// SAFETY: as above.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// Maps `words` u64 of the array `map` (named `name` for errors),
    /// writable or read-only.
    fn new(
        map: MapData,
        name: &'static str,
        words: usize,
        writable: bool,
    ) -> Result<Self, BpfError> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (words * 8).div_ceil(page) * page;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) of the
        // map's fd; the kernel checks the length against the map's size and
        // the fd's flags; nothing else aliases the address range.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(BpfError::Mmap {
                map: name,
                source: io::Error::last_os_error(),
            });
        }
        let start = NonNull::new(address.cast::<AtomicU64>()).ok_or(BpfError::Mmap {
            map: name,
            source: io::Error::from_raw_os_error(libc::EFAULT),
        })?;
        Ok(Self {
            start,
            words,
            bytes,
            _map: map,
        })
    }

    /// The whole map as atomics (every value back to back: an array map's
    /// values are contiguous in its mapping). The daemon stores only through
    /// a writable mapping; a read-only one (`balancer stats`) only loads.
    #[must_use]
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `start` is page-aligned, the mapping holds at least
        // `words` u64 (its size was rounded up from them) and lives as long
        // as `self`; every access goes through atomics, and atomic loads of
        // read-only memory are sound for lock-free 8-byte atomics.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr(), self.words) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: the range is the one mmap returned; no reference into it
        // outlives `self` (`words` borrows it).
        let result = unsafe { libc::munmap(self.start.as_ptr().cast(), self.bytes) };
        if result != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "cannot unmap a BPF map");
        }
    }
}

fn take_words(ebpf: &mut Ebpf, name: &'static str, words: usize) -> Result<MappedWords, BpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    let Map::Array(data) = map else {
        return Err(BpfError::MapType {
            map: name,
            source: MapError::InvalidMapType { map_type: 0 },
        });
    };
    MappedWords::new(data, name, words, true)
}

/// The pinned maps of a running instance, opened by `balancer stats`
/// without the daemon's help: the kernel's per-backend bytes and the
/// daemon's counters, mapped read-only.
pub struct PinnedStats {
    backend_bytes: PerCpuArray<MapData, BackendBytes>,
    backend_stats: MappedWords,
    daemon_stats: MappedWords,
}

impl std::fmt::Debug for PinnedStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedStats").finish_non_exhaustive()
    }
}

impl PinnedStats {
    /// Whether `dir` holds this instance's pins.
    ///
    /// # Errors
    /// [`BpfError::PinLookup`] when bpffs does not let this user look.
    pub fn exist(dir: &Path) -> Result<bool, BpfError> {
        let path = dir.join(map::DAEMON_STATS);
        path.try_exists()
            .map_err(|source| BpfError::PinLookup { path, source })
    }

    /// Opens the pins under `dir`.
    ///
    /// # Errors
    /// [`BpfError::PinPermission`] without CAP_BPF or root, else
    /// [`BpfError::OpenPin`] or a mapping error.
    pub fn open(dir: &Path) -> Result<Self, BpfError> {
        let bytes = open_pin(dir, map::BACKEND_BYTES)?;
        let backend_bytes =
            PerCpuArray::try_from(Map::PerCpuArray(bytes)).map_err(|source| BpfError::MapType {
                map: map::BACKEND_BYTES,
                source,
            })?;
        Ok(Self {
            backend_bytes,
            backend_stats: MappedWords::new(
                open_pin(dir, map::BACKEND_STATS)?,
                map::BACKEND_STATS,
                words_of::<BackendStats>(MAX_BACKENDS),
                false,
            )?,
            daemon_stats: MappedWords::new(
                open_pin(dir, map::DAEMON_STATS)?,
                map::DAEMON_STATS,
                words_of::<DaemonStats>(1),
                false,
            )?,
        })
    }

    /// `BACKEND_BYTES[slot]` summed over the CPUs.
    ///
    /// # Errors
    /// The lookup failed.
    pub fn backend_bytes(&self, slot: u32) -> Result<BackendBytes, BpfError> {
        sum_bytes(&self.backend_bytes, slot)
    }

    /// `BACKEND_STATS[slot]`, each word read atomically; zeros outside.
    #[must_use]
    pub fn backend_stats(&self, slot: u32) -> BackendStats {
        let start = usize::try_from(slot).unwrap_or(usize::MAX) * BACKEND_STAT_WORDS;
        let mut stats = BackendStats {
            words: [0; BACKEND_STAT_WORDS],
        };
        if let Some(words) = self
            .backend_stats
            .words()
            .get(start..start.saturating_add(BACKEND_STAT_WORDS))
        {
            for (out, word) in stats.words.iter_mut().zip(words) {
                *out = word.load(std::sync::atomic::Ordering::Relaxed);
            }
        }
        stats
    }

    /// `DAEMON_STATS[0]`, each word read atomically.
    #[must_use]
    pub fn daemon_stats(&self) -> DaemonStats {
        let mut stats = DaemonStats {
            words: [0; DAEMON_STAT_WORDS],
        };
        for (out, word) in stats.words.iter_mut().zip(self.daemon_stats.words()) {
            *out = word.load(std::sync::atomic::Ordering::Relaxed);
        }
        stats
    }
}

fn open_pin(dir: &Path, name: &'static str) -> Result<MapData, BpfError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| {
        let denied = matches!(
            &source,
            MapError::SyscallError(err)
                if matches!(err.io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        );
        if denied {
            BpfError::PinPermission { path, source }
        } else {
            BpfError::OpenPin { path, source }
        }
    })
}

fn sum_bytes(
    map: &PerCpuArray<MapData, BackendBytes>,
    slot: u32,
) -> Result<BackendBytes, BpfError> {
    match map.get(&slot, 0) {
        Ok(per_cpu) => Ok(per_cpu
            .iter()
            .fold(BackendBytes::default(), |sum, cpu| sum.wrapping_add(*cpu))),
        Err(MapError::OutOfBounds { .. }) => Ok(BackendBytes::default()),
        Err(source) => Err(BpfError::MapOp {
            op: "read",
            map: map::BACKEND_BYTES,
            source,
        }),
    }
}

impl BpfError {
    /// Whether the error is a missing privilege (not a missing feature).
    #[must_use]
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            Self::Permission { .. } | Self::PinPermission { .. } | Self::PinLookup { .. }
        )
    }
}

/// The verdict program of the object, typed.
fn verdict(ebpf: &mut Ebpf) -> Result<&mut SkSkb, BpfError> {
    ebpf.program_mut(prog::VERDICT)
        .ok_or(BpfError::Missing {
            kind: "program",
            name: prog::VERDICT,
        })?
        .try_into()
        .map_err(|source| BpfError::Program {
            action: "use",
            program: prog::VERDICT,
            source,
        })
}

/// How many entries the per-socket maps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntries {
    pub peers: usize,
    pub sockets: usize,
    pub targets: usize,
}

/// The two sockhashes every spliced socket joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketMap {
    /// `SOCKETS`: the verdict is attached, so it reads what a socket here
    /// receives.
    Sockets,
    /// `TARGETS`: no program; the verdict redirects to the sockets here.
    Targets,
}

impl SocketMap {
    fn name(self) -> &'static str {
        match self {
            Self::Sockets => map::SOCKETS,
            Self::Targets => map::TARGETS,
        }
    }
}

/// The pinned maps of one instance; removed on drop.
#[derive(Debug)]
struct Pins {
    dir: PathBuf,
    /// The directories this instance created, `dir` first and then its
    /// new ancestors (e.g. `/sys/fs/bpf/balancer`): removed on drop when
    /// empty, so a clean exit leaves bpffs as it found it.
    created_dirs: Vec<PathBuf>,
}

impl Pins {
    fn create(dir: &Path, ebpf: &Ebpf) -> Result<Self, BpfError> {
        let created_dirs = dir
            .ancestors()
            .take_while(|path| !path.exists())
            .map(Path::to_path_buf)
            .collect();
        fs::create_dir_all(dir).map_err(|source| BpfError::Pin {
            action: "create the directory for",
            path: dir.to_path_buf(),
            source,
        })?;
        let pins = Self {
            dir: dir.to_path_buf(),
            created_dirs,
        };
        for name in map::ALL {
            let path = dir.join(name);
            // A crashed run leaves its pins; a pin keeps its old map alive, so
            // replace it rather than reuse stale counters.
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "replaced a stale BPF pin"),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(BpfError::Pin {
                        action: "remove the stale",
                        path,
                        source,
                    });
                }
            }
            let map = ebpf
                .map(name)
                .ok_or(BpfError::Missing { kind: "map", name })?;
            map.pin(&path).map_err(|err| BpfError::Pin {
                action: "create",
                path: path.clone(),
                source: io::Error::other(err),
            })?;
        }
        Ok(pins)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for name in map::ALL {
            let path = self.dir.join(name);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %err, "cannot remove BPF pin");
            }
        }
        for dir in &self.created_dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                // Another instance's pins live beside ours: its parent stays.
                Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty => break,
                Err(err) => {
                    tracing::warn!(path = %dir.display(), %err, "cannot remove BPF pin directory");
                    break;
                }
            }
        }
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(BpfError::Missing { kind: "map", name })?;
    M::try_from(map).map_err(|source| BpfError::MapType { map: name, source })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the guard cannot leave a map handle inconsistent
    // (the state lives in the kernel), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ignore_absent(
    result: Result<(), MapError>,
    op: &'static str,
    map: &'static str,
) -> Result<(), BpfError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(source) => Err(BpfError::MapOp { op, map, source }),
    }
}

fn classify_io(action: &'static str, source: io::Error) -> BpfError {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => BpfError::Permission { action, source },
        _ => BpfError::KernelFeature { action, source },
    }
}

fn classify_load(err: EbpfError) -> BpfError {
    match err {
        EbpfError::MapError(MapError::CreateError { io_error, .. }) => {
            classify_io("create the BPF maps", io_error)
        }
        err => BpfError::Load(err),
    }
}

fn classify_program_load(err: ProgramError) -> BpfError {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => match io_error.raw_os_error() {
            Some(libc::EPERM) => BpfError::Permission {
                action: "load the verdict program",
                source: io_error,
            },
            Some(libc::EINVAL | libc::E2BIG | libc::EACCES) => {
                let log = verifier_log.to_string();
                let lines: Vec<&str> = log.lines().collect();
                let start = lines.len().saturating_sub(VERIFIER_LOG_LINES);
                BpfError::Verifier {
                    program: prog::VERDICT,
                    log_excerpt: lines.get(start..).unwrap_or_default().join("\n"),
                    source: io_error,
                }
            }
            _ => classify_io("load the verdict program", io_error),
        },
        source => BpfError::Program {
            action: "load",
            program: prog::VERDICT,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_size(bpf: &Bpf) -> u32 {
        bpf._ebpf
            .program(prog::VERDICT)
            .expect("verdict in the object")
            .info()
            .expect("program info")
            .size_translated()
            .expect("translated size (Linux >= 4.15)")
    }

    // Needs root. The switch must cost nothing when off: the verifier knows
    // the read-only AYA_LOG_LEVEL and drops every log statement, so the
    // program the kernel runs is much smaller than with logging on.
    #[test]
    fn the_verifier_removes_the_log_statements_unless_bpf_log_is_on() {
        let off = verdict_size(&Bpf::load(None, false).expect("load (needs root)"));
        let mut on = Bpf::load(None, true).expect("load with the log on");
        assert!(on.take_logger().is_some(), "no logger with the log on");
        let on = verdict_size(&on);
        assert!(
            off * 2 < on,
            "translated verdict: {off} bytes with the log off, {on} with it on"
        );
    }

    // Needs root (CAP_BPF): loading is the only way to see the maps as the
    // kernel does; missing privilege fails the test with the cause.
    #[test]
    fn the_object_defines_every_map_of_the_contract() {
        let ebpf = Ebpf::load(OBJECT).expect("load the BPF object (needs root/CAP_BPF)");
        for name in map::ALL {
            assert!(
                ebpf.map(name).is_some(),
                "map {name} missing from the object"
            );
        }
        assert!(
            ebpf.program(prog::VERDICT).is_some(),
            "program {} missing",
            prog::VERDICT
        );
    }

    #[test]
    fn pins_are_replaced_when_stale_and_removed_on_drop() {
        // Nested like /sys/fs/bpf/balancer/<instance>: both levels are new.
        let parent = PathBuf::from(format!(
            "/sys/fs/bpf/balancer-test-pins-{}",
            std::process::id()
        ));
        let dir = parent.join("instance");
        // The first instance plays a crashed run whose pins are still there.
        let stale = Bpf::load(Some(&dir), false).expect("load with pins (needs root and bpffs)");
        let bpf = Bpf::load(Some(&dir), false).expect("load over stale pins");
        for name in map::ALL {
            assert!(dir.join(name).exists(), "{name} not pinned");
        }
        drop(bpf);
        for name in map::ALL {
            assert!(!dir.join(name).exists(), "{name} pin left behind");
        }
        drop(stale);
        assert!(!dir.exists(), "pin directory left behind");
        assert!(!parent.exists(), "parent pin directory left behind");
    }
}
