//! The status file `<run dir>/status.json` (see [`crate::config::run_dir`]):
//! written atomically by the daemon (temp file, then rename), read by
//! `balancer stats`, which tells a live instance from a leftover file by the
//! pid in it and by the file's age.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::snapshot::Snapshot;

/// Name of the status file inside the run directory.
pub const FILE_NAME: &str = "status.json";
/// A status file older than this belongs to a daemon that stopped writing
/// (it writes every second).
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// Reading or writing the status file failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("instance `{instance}` is not running (no {})", path.display())]
    NotRunning { instance: String, path: PathBuf },
    #[error(
        "instance `{instance}` is not running ({} names pid {pid}, which has exited)",
        path.display()
    )]
    DeadPid {
        instance: String,
        path: PathBuf,
        pid: u32,
    },
    #[error(
        "instance `{instance}` is not running ({} was last written {}s ago)",
        path.display(),
        age.as_secs()
    )]
    Stale {
        instance: String,
        path: PathBuf,
        age: Duration,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a balancer status file: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// `<dir>/status.json`.
#[must_use]
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `snapshot` to `<dir>/status.json` so that a reader sees either the
/// old or the new file, never a part: a temp file in the same directory,
/// then rename. Creates `dir` when missing.
///
/// # Errors
/// [`StatusError::Write`] naming the file that could not be written.
pub fn write(dir: &Path, snapshot: &Snapshot) -> Result<(), StatusError> {
    write_json(dir, FILE_NAME, snapshot)
}

/// Writes `value` as `<dir>/<name>` atomically (temp file, then rename),
/// creating `dir` when missing.
///
/// # Errors
/// [`StatusError::Write`] naming the file that could not be written.
pub fn write_json(
    dir: &Path,
    name: &str,
    value: &impl serde::Serialize,
) -> Result<(), StatusError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| StatusError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StatusError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    let mut file = std::fs::File::create(&temp).map_err(err(&temp))?;
    file.write_all(&bytes).map_err(err(&temp))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        StatusError::Write {
            path: path.clone(),
            source,
        }
    })
}

/// Removes the status file and, if then empty, the run directory.
pub fn remove(dir: &Path) {
    let path = path_in(dir);
    if let Err(error) = std::fs::remove_file(&path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "cannot remove the status file");
    }
    let _ = std::fs::remove_dir(dir);
}

/// Reads the status of `instance` from `dir` and checks that the daemon
/// that wrote it still runs: the pid exists and the file is younger than
/// [`STALE_AFTER`] at `now`.
///
/// # Errors
/// [`StatusError::NotRunning`], [`StatusError::DeadPid`] or
/// [`StatusError::Stale`] when no live daemon stands behind the file;
/// [`StatusError::Read`] or [`StatusError::Parse`] for an unreadable one.
pub fn read_live(instance: &str, dir: &Path, now: SystemTime) -> Result<Snapshot, StatusError> {
    let path = path_in(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(StatusError::NotRunning {
                instance: instance.to_owned(),
                path,
            });
        }
        Err(source) => return Err(StatusError::Read { path, source }),
    };
    let snapshot: Snapshot = serde_json::from_str(&text).map_err(|source| StatusError::Parse {
        path: path.clone(),
        source,
    })?;
    if !pid_alive(snapshot.pid) {
        return Err(StatusError::DeadPid {
            instance: instance.to_owned(),
            path,
            pid: snapshot.pid,
        });
    }
    let age = snapshot.age(unix_ms(now));
    if age > STALE_AFTER {
        return Err(StatusError::Stale {
            instance: instance.to_owned(),
            path,
            age,
        });
    }
    Ok(snapshot)
}

/// Milliseconds since the Unix epoch (zero before it).
#[must_use]
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Whether a process with this pid exists (signal 0: EPERM still means it
/// exists).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::snapshot::{DaemonCounters, FORMAT_VERSION};

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("balancer-status-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn snapshot(pid: u32, written_unix_ms: u64) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            instance: "t".to_owned(),
            pid,
            engine: "splice".to_owned(),
            started_unix_ms: written_unix_ms,
            written_unix_ms,
            uptime_secs: 0.0,
            counters: DaemonCounters::default(),
            backends: Vec::new(),
        }
    }

    #[test]
    fn a_written_file_reads_back_while_fresh_and_is_gone_after_remove() {
        let dir = scratch("fresh");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let snap = snapshot(std::process::id(), unix_ms(now));
        write(&dir, &snap).expect("write");
        write(&dir, &snap).expect("overwrite");
        let back = read_live("t", &dir, now + Duration::from_secs(1)).expect("fresh");
        assert_eq!(back, snap);
        let stale = read_live("t", &dir, now + STALE_AFTER + Duration::from_secs(1));
        assert!(matches!(stale, Err(StatusError::Stale { .. })), "{stale:?}");
        remove(&dir);
        assert!(!dir.exists());
        let missing = read_live("t", &dir, now).expect_err("removed");
        assert!(matches!(missing, StatusError::NotRunning { .. }));
        assert!(missing.to_string().contains("`t`"), "{missing}");
        assert!(missing.to_string().contains(FILE_NAME), "{missing}");
    }

    #[test]
    fn a_file_naming_a_dead_pid_is_not_a_running_instance() {
        let dir = scratch("dead");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        // Above the kernel's pid_max limit (4194304): never a live process.
        write(&dir, &snapshot(4_194_305, unix_ms(now))).expect("write");
        let dead = read_live("t", &dir, now).expect_err("dead pid");
        assert!(matches!(dead, StatusError::DeadPid { .. }), "{dead:?}");
        remove(&dir);
    }

    #[test]
    fn a_file_that_is_not_json_is_a_parse_error_naming_it() {
        let dir = scratch("garbage");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(path_in(&dir), "not json").expect("write");
        let error = read_live("t", &dir, SystemTime::UNIX_EPOCH).expect_err("garbage");
        assert!(matches!(error, StatusError::Parse { .. }), "{error:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
