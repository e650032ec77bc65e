//! The sockmap engine's kernel hop, measured. The verdict program does not
//! send a redirected skb itself: it queues it on the peer socket's psock
//! and schedules the psock's work item (`sk_psock_backlog`), which a
//! kworker runs to push the skb out (the send needs the socket lock, which
//! softirq context cannot take). Every redirected message pays that
//! hand-off. This module records the workqueue tracepoints system-wide with
//! `perf` while a workload runs and reports, per psock work item, the wait
//! from queueing to running, the run time, and whether it ran on the CPU
//! that queued it.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{bench::process::Process, netns::NetNs};

/// The function of the psock work item in the tracepoints' output.
const PSOCK_WORK: &str = "sk_psock_backlog";
const EVENTS: &str = "workqueue:workqueue_queue_work,workqueue:workqueue_execute_start,\
                      workqueue:workqueue_execute_end";
/// Bound on perf's start-up and on each control exchange.
const PERF_WAIT: Duration = Duration::from_secs(15);

/// A system-wide `perf record` of the workqueue tracepoints, started with
/// its events disabled so that only [`Recording::enable`]..stop is seen.
pub struct Recording {
    /// Stopped (SIGTERM, on which perf writes its file out) when dropped.
    perf: Process,
    data: PathBuf,
    control: File,
    ack: File,
}

/// What the psock work items did while the recording was enabled.
#[derive(Debug, Clone, PartialEq)]
pub struct PsockWork {
    /// Work items queued.
    pub queued: usize,
    /// Queue -> start, µs, per item that was seen both queued and started.
    pub wait_us: Vec<f64>,
    /// Start -> end, µs.
    pub run_us: Vec<f64>,
    /// Items that ran on the CPU that queued them.
    pub same_cpu: usize,
}

impl Recording {
    /// Starts `perf record -a` into `dir`, events off, and waits until perf
    /// listens on its control FIFO. `ns` only hosts the process: the
    /// recording covers every CPU and namespace.
    pub fn start(ns: &NetNs, dir: &Path) -> Result<Self> {
        let data = dir.join("psock.perf.data");
        let control_path = dir.join("psock.perf.ctl");
        let ack_path = dir.join("psock.perf.ack");
        for fifo in [&control_path, &ack_path] {
            let _ = std::fs::remove_file(fifo);
            nix::unistd::mkfifo(fifo.as_path(), nix::sys::stat::Mode::S_IRWXU)
                .with_context(|| format!("mkfifo {}", fifo.display()))?;
        }
        // Open the ack FIFO for reading first: perf blocks opening it for
        // writing until a reader exists.
        let ack = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&ack_path)
            .with_context(|| format!("open {}", ack_path.display()))?;
        let fifos = format!("fifo:{},{}", control_path.display(), ack_path.display());
        let data_arg = data.to_string_lossy();
        let mut perf = Process::spawn(
            ns,
            "perf",
            Path::new("perf"),
            &[
                "record",
                "-a",
                "-q",
                "-D",
                "-1",
                "-e",
                EVENTS,
                "-o",
                &data_arg,
                "--control",
                &fifos,
            ],
            &[],
            dir,
        )
        .context("start perf record (linux-perf; scripts/setup.sh installs it)")?;
        let began = Instant::now();
        let control = loop {
            // Without O_NONBLOCK this would block until perf reads; with it
            // the open fails (ENXIO) until perf has the FIFO open.
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&control_path)
            {
                Ok(file) => break file,
                Err(_) if began.elapsed() < PERF_WAIT => {}
                Err(error) => {
                    bail!(
                        "perf did not open its control FIFO within {PERF_WAIT:?}: {error}\n{}",
                        perf.log_tail()
                    );
                }
            }
            perf.ensure_running()?;
            thread::sleep(Duration::from_millis(10));
        };
        Ok(Self {
            perf,
            data,
            control,
            ack,
        })
    }

    /// Turns the events on; returns once perf acknowledged it.
    pub fn enable(&mut self) -> Result<()> {
        self.command("enable")
    }

    fn command(&mut self, command: &str) -> Result<()> {
        writeln!(self.control, "{command}").context("write to perf's control FIFO")?;
        let began = Instant::now();
        let mut got = Vec::new();
        // perf writes "ack\n" and its terminating NUL.
        while !got.windows(4).any(|window| window == b"ack\n") {
            let mut buf = [0u8; 16];
            match self.ack.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error).context("read perf's ack FIFO"),
            }
            ensure!(
                began.elapsed() < PERF_WAIT,
                "perf did not acknowledge {command:?} within {PERF_WAIT:?}"
            );
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Turns the events off, stops perf and reads what it recorded.
    pub fn finish(mut self) -> Result<PsockWork> {
        self.command("disable")?;
        self.perf.ensure_running()?;
        let Self { perf, data, .. } = self;
        let log = perf.log_tail();
        drop(perf);
        let script = Command::new("perf")
            .args(["script", "--ns", "-F", "cpu,time,event,trace", "-i"])
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .context("run perf script")?;
        let _ = std::fs::remove_file(&data);
        ensure!(
            script.status.success(),
            "perf script failed: {}\nperf record said:\n{log}",
            String::from_utf8_lossy(&script.stderr).trim()
        );
        Ok(parse(&String::from_utf8_lossy(&script.stdout)))
    }
}

/// One tracepoint line of `perf script -F cpu,time,event,trace`, e.g.
/// `[001] 39790.050043123: workqueue:workqueue_queue_work: work
/// struct=0xffff... function=sk_psock_backlog workqueue=events ...`.
struct Event<'a> {
    cpu: u32,
    seconds: f64,
    name: &'a str,
    work: &'a str,
}

fn event(line: &str) -> Option<Event<'_>> {
    let line = line.trim_start();
    let rest = line.strip_prefix('[')?;
    let (cpu, rest) = rest.split_once(']')?;
    let (time, rest) = rest.trim_start().split_once(':')?;
    let rest = rest.trim_start().strip_prefix("workqueue:")?;
    let (name, rest) = rest.split_once(':')?;
    let rest = rest.trim_start().strip_prefix("work struct")?;
    let rest = rest.trim_start_matches(['=', ' ']);
    let work = rest.split([' ', ':']).next()?;
    Some(Event {
        cpu: cpu.trim().parse().ok()?,
        seconds: time.trim().parse().ok()?,
        name,
        work,
    })
}

/// Pairs each psock item's queueing with its start and end.
fn parse(script: &str) -> PsockWork {
    let mut queued_at: HashMap<&str, (f64, u32)> = HashMap::new();
    let mut started_at: HashMap<&str, f64> = HashMap::new();
    let mut work = PsockWork {
        queued: 0,
        wait_us: Vec::new(),
        run_us: Vec::new(),
        same_cpu: 0,
    };
    for line in script.lines().filter(|line| line.contains(PSOCK_WORK)) {
        let Some(event) = event(line) else { continue };
        match event.name {
            "workqueue_queue_work" => {
                work.queued += 1;
                // A work item already pending is not queued twice, so the
                // first queueing is the one its run answers.
                queued_at
                    .entry(event.work)
                    .or_insert((event.seconds, event.cpu));
            }
            "workqueue_execute_start" => {
                if let Some((queued, cpu)) = queued_at.remove(event.work) {
                    work.wait_us.push((event.seconds - queued) * 1e6);
                    work.same_cpu += usize::from(cpu == event.cpu);
                }
                started_at.insert(event.work, event.seconds);
            }
            "workqueue_execute_end" => {
                if let Some(started) = started_at.remove(event.work) {
                    work.run_us.push((event.seconds - started) * 1e6);
                }
            }
            _ => {}
        }
    }
    work
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_start_and_end_of_one_item_give_its_wait_run_and_cpu() {
        let script = "\
 [001] 100.000010000: workqueue:workqueue_queue_work: work struct=0xffff1 function=sk_psock_backlog workqueue=events req_cpu=8192 cpu=1
 [000] 100.000011000: workqueue:workqueue_queue_work: work struct=0xffff9 function=vmstat_update workqueue=mm_percpu_wq req_cpu=0 cpu=0
 [001] 100.000016500: workqueue:workqueue_execute_start: work struct 0xffff1: function sk_psock_backlog
 [001] 100.000026500: workqueue:workqueue_execute_end: work struct 0xffff1: function sk_psock_backlog
 [000] 100.000030000: workqueue:workqueue_queue_work: work struct=0xffff2 function=sk_psock_backlog workqueue=events req_cpu=8192 cpu=0
 [001] 100.000034000: workqueue:workqueue_execute_start: work struct 0xffff2: function sk_psock_backlog
";
        let work = parse(script);
        assert_eq!(work.queued, 2);
        assert_eq!(work.wait_us.len(), 2);
        assert!((work.wait_us[0] - 6.5).abs() < 1e-6, "{:?}", work.wait_us);
        assert!((work.wait_us[1] - 4.0).abs() < 1e-6, "{:?}", work.wait_us);
        assert_eq!(work.run_us.len(), 1);
        assert!((work.run_us[0] - 10.0).abs() < 1e-6, "{:?}", work.run_us);
        assert_eq!(work.same_cpu, 1);
    }
}
