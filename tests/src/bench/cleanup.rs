//! What a benchmark must undo if it is interrupted: child process groups,
//! network namespaces, BPF pins and its scratch directory.
//! Every guard registers what it created here and unregisters it in its
//! `Drop`; a signal thread (SIGINT,
//! SIGTERM, SIGHUP) removes whatever is still registered, then exits, so
//! Ctrl-C leaves no namespace, rule or process behind. iptables rules live in
//! the benchmark's namespaces and vanish with them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
};

use nix::{
    sys::signal::{self, SigSet, SigmaskHow, Signal},
    unistd::Pid,
};

#[derive(Debug, Default)]
struct Registry {
    process_groups: Vec<i32>,
    namespaces: Vec<String>,
    directories: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    process_groups: Vec::new(),
    namespaces: Vec::new(),
    directories: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock must not stop the cleanup.
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Blocks the termination signals in the calling thread (call it first in
/// `main`, before any thread exists, so every thread inherits the mask) and
/// starts the thread that waits for them. `std::process::Command` does not
/// reset the mask in a child: [`Process`](crate::bench::process::Process)
/// empties it before exec, or no child would die of SIGTERM.
pub fn install() -> nix::Result<()> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            let program = std::env::current_exe()
                .ok()
                .and_then(|exe| {
                    exe.file_name()
                        .map(|name| name.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "benchmark".to_owned());
            eprintln!("{program}: {sig}, cleaning up");
            remove_everything();
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Remembers a child's process group (the child called `setpgid(0, 0)`).
pub fn add_process_group(pgid: i32) {
    registry().process_groups.push(pgid);
}

pub fn remove_process_group(pgid: i32) {
    registry().process_groups.retain(|known| *known != pgid);
}

/// Remembers a namespace created with `ip netns add`.
pub fn add_namespace(name: &str) {
    registry().namespaces.push(name.to_owned());
}

pub fn remove_namespace(name: &str) {
    registry().namespaces.retain(|known| known != name);
}

/// Remembers a scratch directory (configs, logs) to delete.
pub fn add_directory(path: &Path) {
    registry().directories.push(path.to_owned());
}

pub fn remove_directory(path: &Path) {
    registry().directories.retain(|known| known != path);
}

fn remove_everything() {
    let mut registry = registry();
    for pgid in registry.process_groups.drain(..) {
        let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    for name in registry.namespaces.drain(..) {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    // Pins of balancer instances started by this process (`bc<pid>...`).
    let prefix = format!("bc{}", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/balancer") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir("/sys/fs/bpf/balancer");
    for dir in registry.directories.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
