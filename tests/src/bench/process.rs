//! Child processes of the comparison benchmark: started inside a namespace
//! with `nsenter --net=` (not `ip netns exec`, which remounts /sys and hides
//! bpffs from the balancer), in their own process group, with
//! `RLIMIT_NOFILE` raised to its hard limit and no signal blocked, stderr to
//! a log file. Dropping
//! one stops its whole group (SIGTERM, then SIGKILL after 3 s) and reaps it.

use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};

use crate::{bench::cleanup, netns::NetNs};

/// File descriptors a child may open: the hard `RLIMIT_NOFILE` this process
/// inherited (raising it needs CAP_SYS_RESOURCE, which sessions here lack).
pub fn nofile_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit struct for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

/// A running child process group.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Runs `program args` inside `ns`; stderr and stdout go to
    /// `log_dir/<name>.log`.
    pub fn spawn(
        ns: &NetNs,
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let nofile = nofile_hard_limit();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (setpgid, setrlimit, sigemptyset,
        // sigprocmask) on plain values on its own stack; it allocates
        // nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The signal thread's mask (SIGINT, SIGTERM, SIGHUP blocked,
                // see `cleanup::install`) survives fork and exec: without
                // this, SIGTERM on drop would wait for its 3 s and SIGKILL.
                let mut unblocked = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                if libc::sigemptyset(unblocked.as_mut_ptr()) != 0
                    || libc::sigprocmask(
                        libc::SIG_SETMASK,
                        unblocked.as_ptr(),
                        std::ptr::null_mut(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                let limit = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawn {} in {}", program.display(), ns.name()))?;
        if let Ok(pid) = i32::try_from(child.id()) {
            cleanup::add_process_group(pid);
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id (nsenter without `--fork` execs the program, so this
    /// is the program's own pid).
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Waits (at most 20 s) until `addr` accepts a TCP connection from
    /// inside `ns`; fails early, with the log, if the process exits.
    pub fn wait_accepting(&mut self, ns: &NetNs, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = ns.run(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not accept on {addr} within 20 s:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// Fails with the log if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last 40 lines of the process's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.pid());
        let _ = signal::killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Children of the group (dante's workers) too, whatever the leader did.
        let _ = signal::killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
        cleanup::remove_process_group(self.pid());
    }
}
