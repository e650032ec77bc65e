//! Child processes of the demo: each in its own process group with its
//! output in a log file, all stopped (SIGTERM, then SIGKILL) when the set is
//! dropped, and an interrupt flag set by SIGINT/SIGTERM.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::process::{self, Command};

/// How long a child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Lines of a dead child's log quoted in the error.
const LOG_TAIL_LINES: usize = 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM set a flag instead of ending xtask, so it
/// can stop its children and remove its files first.
pub fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, and it replaces no handler anyone relies on.
        unsafe { signal::sigaction(signal, &action) }
            .with_context(|| format!("could not install a {signal} handler"))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since `catch_interrupts`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// One running child.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Every child the demo started; dropping the set stops them all.
#[derive(Default)]
pub struct Children {
    running: Vec<Running>,
}

impl Children {
    /// Starts `cmd` with stdin closed and stdout/stderr appended to `log`.
    /// The child gets its own process group, so a terminal's Ctrl-C reaches
    /// only xtask, which then stops the children in order; and SIGTERM if
    /// xtask itself dies without cleaning up.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command, log: &Path) -> Result<()> {
        let out =
            File::create(log).with_context(|| format!("could not create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("could not reopen {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: `{}`", process::display(cmd)))?;
        eprintln!(
            "demo: started {name} (pid {}): {}",
            child.id(),
            process::display(cmd)
        );
        self.running.push(Running {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        });
        Ok(())
    }

    /// Fails naming the first child that has exited, with its status and
    /// the end of its log.
    pub fn check(&mut self) -> Result<()> {
        for running in &mut self.running {
            let status = running
                .child
                .try_wait()
                .with_context(|| format!("could not poll {}", running.name))?;
            if let Some(status) = status {
                bail!(
                    "{} exited unexpectedly ({status}); the end of its log {}:\n{}",
                    running.name,
                    running.log.display(),
                    tail(&running.log, LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    fn stop(running: &mut Running) {
        if matches!(running.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = i32::try_from(running.child.id()) else {
            return;
        };
        // The child may have exited since try_wait: ESRCH is fine.
        let _ignored = signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(running.child.try_wait(), Ok(Some(_))) {
                eprintln!("demo: stopped {}", running.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "demo: {} ignored SIGTERM for {STOP_GRACE:?}; killing it",
            running.name
        );
        let _ignored = running.child.kill();
        let _ignored = running.child.wait();
    }
}

impl Drop for Children {
    /// Stops the children newest first: the daemon before its backends.
    fn drop(&mut self) {
        for running in self.running.iter_mut().rev() {
            Self::stop(running);
        }
    }
}

/// The last `lines` lines of a log file, or a note that it is empty or
/// unreadable.
pub fn tail(log: &Path, lines: usize) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) if text.trim().is_empty() => "  (empty)".to_owned(),
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all.iter()
                .skip(start)
                .map(|line| format!("  | {line}\n"))
                .collect()
        }
        Err(error) => format!("  (could not read it: {error})"),
    }
}
