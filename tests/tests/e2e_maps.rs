//! Black-box: the pinned BPF maps of a running daemon are the one source of
//! truth for its counters. Two `microsocks` backends on the loopback of a
//! throw-away namespace, the sockmap engine, round robin; the test moves a
//! known number of bytes through each backend and then reads the pins
//! itself, with raw `bpf(2)` calls and `mmap` (not through the daemon, not
//! through balancer's own reader): per-backend connections and bytes must
//! equal what it did, and `balancer stats --json` must say the same, also
//! while a connection is open. Once the daemon exits, its pins are gone.

mod support;

use std::{
    ffi::CString,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use balancer_common::{
    BACKEND_STAT_WORDS, BackendBytes, DAEMON_STAT_WORDS, MAX_BACKENDS, daemon_stat, map, stat,
};
use balancer_tests::{Microsocks, NetNs, require_root};
use serde_json::Value;
use support::{
    Daemon, Target, ThreadServer, free_port, socks_connect, stats_json, two_backend_config, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Connections per backend (round robin alternates them).
const PER_BACKEND: u64 = 3;
const UP_PAYLOAD: u64 = 300_000;
const DOWN_PAYLOAD: u64 = 700_000;
/// After the handshake the client writes a 16-byte header and the payload.
const UP_PER_CONNECTION: u64 = 16 + UP_PAYLOAD;
const DOWN_PER_CONNECTION: u64 = DOWN_PAYLOAD;

// bpf(2) commands (uapi linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;

/// Reads a `u64` U and a `u64` D, then U bytes, then answers D bytes and
/// closes.
fn sink_then_source(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut header = [0u8; 16];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let up = u64::from_be_bytes(header[..8].try_into().unwrap_or_default());
    let down = u64::from_be_bytes(header[8..].try_into().unwrap_or_default());
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = up;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(buf.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n as u64,
        }
    }
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = down;
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(chunk.len())
            .min(chunk.len());
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        left -= n as u64;
    }
}

/// A SOCKS5 connection whose payload has not been sent yet.
fn open(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let stream = socks_connect(proxy, &Target::Addr(target), None).expect("SOCKS5 CONNECT");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
}

/// Sends the header and payload, reads the answer to the close; returns
/// (bytes written, bytes read) after the handshake.
fn finish(mut stream: TcpStream) -> (u64, u64) {
    let mut upload = Vec::new();
    upload.extend_from_slice(&UP_PAYLOAD.to_be_bytes());
    upload.extend_from_slice(&DOWN_PAYLOAD.to_be_bytes());
    upload.resize(usize::try_from(UP_PER_CONNECTION).expect("fits"), 0xa5);
    stream.write_all(&upload).expect("upload");
    let mut download = Vec::new();
    stream.read_to_end(&mut download).expect("download");
    (upload.len() as u64, download.len() as u64)
}

/// A map opened from its pin with `BPF_OBJ_GET`.
fn open_pin(path: &Path) -> OwnedFd {
    let name = CString::new(path.to_str().expect("utf-8 pin path")).expect("no NUL");
    // bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed bpf_attr of 128 bytes with a valid
    // pathname pointer that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this fd, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd fits")) }
}

/// How many CPUs a per-CPU map has a value for (`possible`, e.g. `0-1`).
fn possible_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("cpu/possible");
    text.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<usize>().expect("cpu") - a.parse::<usize>().expect("cpu") + 1,
            None => 1,
        })
        .sum()
}

/// `BACKEND_BYTES[slot]` summed over the CPUs, by `BPF_MAP_LOOKUP_ELEM`.
fn kernel_bytes(fd: &OwnedFd, slot: u32) -> BackendBytes {
    let mut values = vec![BackendBytes::default(); possible_cpus()];
    let key = slot;
    // bpf_attr for lookups: map_fd (u32), pad, key (u64 ptr), value (u64 ptr), flags.
    let mut attr = [0u64; 16];
    attr[0] = u64::try_from(fd.as_raw_fd()).expect("fd");
    attr[1] = (&raw const key) as u64;
    attr[2] = values.as_mut_ptr() as u64;
    // SAFETY: `attr` is a valid bpf_attr; `values` has room for one
    // 32-byte value per possible CPU, as the kernel writes for a per-CPU map.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(
        result,
        0,
        "lookup BACKEND_BYTES[{slot}]: {}",
        std::io::Error::last_os_error()
    );
    values
        .iter()
        .fold(BackendBytes::default(), |sum, cpu| sum.wrapping_add(*cpu))
}

/// The first `words` u64 of an mmap-able array map, copied out of a
/// read-only shared mapping.
fn mapped_words(fd: &OwnedFd, words: usize) -> Vec<u64> {
    let bytes = (words * 8).next_multiple_of(4096);
    // SAFETY: a fresh read-only shared mapping of an mmap-able map fd; the
    // kernel checks the length against the map.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        address,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let start = address.cast::<u64>();
    let out = (0..words)
        // SAFETY: `i < words` lies inside the mapping; volatile because the
        // daemon writes these pages concurrently.
        .map(|i| unsafe { std::ptr::read_volatile(start.add(i)) })
        .collect();
    // SAFETY: the range mmap returned, no longer used.
    unsafe { libc::munmap(address, bytes) };
    out
}

/// One backend as the pins say.
#[derive(Debug, PartialEq, Eq)]
struct Direct {
    name: String,
    active: u64,
    attempts: u64,
    successes: u64,
    up: u64,
    down: u64,
}

/// Reads every backend of `instance` straight from its pins, named by the
/// identity file the daemon keeps in its run directory.
fn read_pins(instance: &str) -> (Vec<Direct>, Vec<u64>) {
    let (backends, daemon) = read_pins_with_kernel_share(instance);
    (backends.into_iter().map(|(b, _)| b).collect(), daemon)
}

/// As [`read_pins`], each backend with what the verdict redirected
/// (`BACKEND_BYTES` alone: bytes and skbs).
fn read_pins_with_kernel_share(instance: &str) -> (Vec<(Direct, BackendBytes)>, Vec<u64>) {
    let pins = PathBuf::from("/sys/fs/bpf/balancer").join(instance);
    let identity: Value = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from("/run/balancer")
                .join(instance)
                .join("backends.json"),
        )
        .expect("identity file"),
    )
    .expect("identity JSON");
    let bytes_fd = open_pin(&pins.join(map::BACKEND_BYTES));
    let stats_fd = open_pin(&pins.join(map::BACKEND_STATS));
    let daemon_fd = open_pin(&pins.join(map::DAEMON_STATS));
    let words = mapped_words(&stats_fd, BACKEND_STAT_WORDS * MAX_BACKENDS as usize);
    let daemon = mapped_words(&daemon_fd, DAEMON_STAT_WORDS);
    let backends = identity["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|owner| {
            let slot = u32::try_from(owner["slot"].as_u64().expect("slot")).expect("u32");
            let block = &words[slot as usize * BACKEND_STAT_WORDS..][..BACKEND_STAT_WORDS];
            assert_eq!(block[stat::BACKEND_ID], owner["id"], "slot {slot} owner");
            // The kernel's bytes plus what user space carried (each
            // connection's first bytes, before the sockmap took it).
            let bytes = kernel_bytes(&bytes_fd, slot);
            let direct = Direct {
                name: owner["name"].as_str().expect("name").to_owned(),
                active: block[stat::ACTIVE],
                attempts: block[stat::ATTEMPTS],
                successes: block[stat::SUCCESSES],
                up: bytes.up + block[stat::FALLBACK_BYTES_UP],
                down: bytes.down + block[stat::FALLBACK_BYTES_DOWN],
            };
            (direct, bytes)
        })
        .collect();
    (backends, daemon)
}

/// The same figures from `balancer stats --json`.
fn from_stats(snapshot: &Value) -> Vec<Direct> {
    let field = |b: &Value, key: &str| b[key].as_u64().unwrap_or_else(|| panic!("{key}: {b}"));
    snapshot["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| Direct {
            name: b["name"].as_str().expect("name").to_owned(),
            active: field(b, "active"),
            attempts: field(b, "attempts"),
            successes: field(b, "successes"),
            up: field(b, "bytes_up"),
            down: field(b, "bytes_down"),
        })
        .collect()
}

#[test]
fn pinned_maps_hold_what_the_daemon_carried_and_stats_reads_them() {
    require_root("network namespaces and BPF");
    let ns = NetNs::new().expect("netns");
    let target =
        ThreadServer::start(&ns, SocketAddr::from((LO, 0)), sink_then_source).expect("target");
    let socks: Vec<Microsocks> = (0..2)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let instance = unique("maps");
    let yaml = two_backend_config(
        &instance,
        [
            ("alpha", socks[0].addr(), ""),
            ("beta", socks[1].addr(), ""),
        ],
        1,
        "engine: sockmap, connect_timeout: 2s, handshake_timeout: 5s",
    );
    let daemon = Daemon::start(&ns, &instance, &yaml).expect("daemon");
    let proxy = daemon.listener("socks");
    let target = target.addr();

    // While one connection is open, stats reads it from the maps.
    let held = ns.run(move || open(proxy, target)).expect("netns");
    let live = stats_json(&instance);
    assert_eq!(live["source"], "bpf_maps", "{live:#}");
    assert_eq!(live["engine"], "sockmap", "{live:#}");
    let live_rows = from_stats(&live);
    assert_eq!(
        live_rows.iter().map(|b| b.active).sum::<u64>(),
        1,
        "{live:#}"
    );
    let (direct_live, _) = read_pins(&instance);
    assert_eq!(
        direct_live.iter().map(|b| b.active).sum::<u64>(),
        1,
        "{direct_live:?}"
    );
    let (mut sent, mut received) = ns.run(move || finish(held)).expect("netns");
    for _ in 1..PER_BACKEND * 2 {
        let (up, down) = ns.run(move || finish(open(proxy, target))).expect("netns");
        sent += up;
        received += down;
    }
    assert_eq!(sent, 2 * PER_BACKEND * UP_PER_CONNECTION);
    assert_eq!(received, 2 * PER_BACKEND * DOWN_PER_CONNECTION);

    // The pairs end asynchronously: wait (bounded) for the maps to say so.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (direct, daemon_words) = loop {
        let (direct, daemon_words) = read_pins(&instance);
        if direct.iter().all(|b| b.active == 0) {
            break (direct, daemon_words);
        }
        assert!(
            Instant::now() < deadline,
            "connections open after 15 s: {direct:?}\n{}",
            daemon.logs()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(daemon_words[daemon_stat::ACCEPTED], 2 * PER_BACKEND);
    assert_eq!(
        daemon_words[daemon_stat::PID],
        serde_json::from_slice::<Value>(
            &std::fs::read(
                PathBuf::from("/run/balancer")
                    .join(&instance)
                    .join("backends.json")
            )
            .expect("identity")
        )
        .expect("json")["pid"]
    );
    let names: Vec<&str> = direct.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta"], "{direct:?}");
    for backend in &direct {
        assert_eq!(
            (backend.attempts, backend.successes),
            (PER_BACKEND, PER_BACKEND),
            "{backend:?}"
        );
        assert_eq!(backend.up, PER_BACKEND * UP_PER_CONNECTION, "{backend:?}");
        assert_eq!(
            backend.down,
            PER_BACKEND * DOWN_PER_CONNECTION,
            "{backend:?}"
        );
    }
    // Past its first 64 KiB the kernel carries a connection: most of each
    // download went through the verdict.
    let kernel: Vec<BackendBytes> = read_pins_with_kernel_share(&instance)
        .0
        .into_iter()
        .map(|(backend, kernel)| {
            assert!(
                kernel.down * 2 > backend.down,
                "the verdict redirected only {} bytes down: {backend:?}",
                kernel.down
            );
            assert!(
                kernel.down_skbs > 0 && kernel.down_skbs <= kernel.down,
                "{kernel:?}"
            );
            eprintln!(
                "{}: {} bytes per skb down",
                backend.name,
                kernel.down / kernel.down_skbs
            );
            kernel
        })
        .collect();
    let snapshot = stats_json(&instance);
    assert_eq!(snapshot["source"], "bpf_maps", "{snapshot:#}");
    assert_eq!(from_stats(&snapshot), direct, "{snapshot:#}");
    // `stats` shows the verdict's share as the pins hold it.
    let shown: Vec<BackendBytes> = snapshot["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            let field = |key: &str| {
                b["sockmap"][key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("sockmap.{key}: {b}"))
            };
            BackendBytes {
                up: field("bytes_up"),
                down: field("bytes_down"),
                up_skbs: field("skbs_up"),
                down_skbs: field("skbs_down"),
            }
        })
        .collect();
    assert_eq!(shown, kernel, "{snapshot:#}");
    assert_eq!(snapshot["counters"]["accepted"], 2 * PER_BACKEND);

    // SIGTERM through the pid the maps name; the daemon removes its pins
    // and identity file itself (the Daemon guard would remove the pins too,
    // so this waits for them before the guard drops).
    let pid = i32::try_from(daemon_words[daemon_stat::PID]).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let pins = PathBuf::from("/sys/fs/bpf/balancer").join(&instance);
    let run_dir = PathBuf::from("/run/balancer").join(&instance);
    let deadline = Instant::now() + Duration::from_secs(15);
    while (pins.exists() || run_dir.exists()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!pins.exists(), "pins left after exit: {}", daemon.logs());
    assert!(
        !run_dir.exists(),
        "run dir left after exit: {}",
        daemon.logs()
    );
    let gone = support::stats(&["--instance", &instance]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}
