//! Everything the benchmark started, and the benchmark's own thread, on one
//! CPU for a while: how the ping-pong measures a path without the cost of
//! waking another CPU.
//!
//! On this project's 2-vCPU virtual machines a 64 B round trip client ->
//! microsocks -> target and back takes ~90 µs when the processes spread
//! over both CPUs and ~14 µs when they share one: a wake-up across CPUs
//! (an IPI to a halted vCPU) costs the hypervisor's time, and whether a
//! given hop crosses CPUs is the scheduler's choice of the moment. The
//! round trips of two runs can differ by 40 µs that way (the backend alone:
//! 49.5 and 91.6 µs p50 in one set of runs), far above the 5-10 µs a proxy
//! adds. On one CPU every hop is a same-CPU wake-up and what remains is
//! the work on the path, the proxy's included.

use std::{collections::HashMap, fs};

use anyhow::{Context, Result};
use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

use crate::bench::cpu::stat_fields;

/// While alive, every descendant process of this one (all their threads)
/// and the calling thread run on one CPU; dropping it gives them back the
/// calling thread's CPUs from before.
#[derive(Debug)]
pub struct OneCpu {
    before: CpuSet,
}

impl OneCpu {
    /// Pins to the first CPU the calling thread may run on. Threads a
    /// pinned thread creates later (a backend's thread per connection)
    /// inherit the pin.
    pub fn pin() -> Result<Self> {
        let before = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
        let cpu = (0..CpuSet::count())
            .find(|&cpu| before.is_set(cpu).unwrap_or(false))
            .context("the benchmark may run on no CPU")?;
        let mut one = CpuSet::new();
        one.set(cpu).context("CPU number")?;
        sched_setaffinity(Pid::from_raw(0), &one).context("pinning the benchmark's thread")?;
        let pinned = Self { before };
        set_descendants(&one)?;
        Ok(pinned)
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        let _ = set_descendants(&self.before);
        let _ = sched_setaffinity(Pid::from_raw(0), &self.before);
    }
}

/// Sets `cpus` on every thread of every process below this one. A thread
/// that ended between the listing and the call is skipped.
fn set_descendants(cpus: &CpuSet) -> Result<()> {
    for pid in descendants(std::process::id(), &parents()?) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
                let _ = sched_setaffinity(Pid::from_raw(tid), cpus);
            }
        }
    }
    Ok(())
}

/// Every process's parent, from `/proc/<pid>/stat`.
fn parents() -> Result<HashMap<u32, u32>> {
    let mut parents = HashMap::new();
    for entry in fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(ppid) = parent_of(&stat)
        {
            parents.insert(pid, ppid);
        }
    }
    Ok(parents)
}

/// The parent pid in a `/proc/<pid>/stat` line.
fn parent_of(stat: &str) -> Option<u32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

/// The processes below `root`, children before grandchildren.
fn descendants(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut found = vec![root];
    let mut i = 0;
    while let Some(&pid) = found.get(i) {
        found.extend(
            parents
                .iter()
                .filter(|&(_, &parent)| parent == pid)
                .map(|(&child, _)| child),
        );
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_follows_the_last_parenthesis_of_the_name() {
        assert_eq!(parent_of("42 (tokio-rt-worker) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of("43 (a) b (c)) R 9 43 43 0"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn descendants_are_the_whole_subtree_and_nothing_else() {
        let parents: HashMap<u32, u32> = [(2, 1), (3, 2), (4, 3), (5, 1), (6, 99)]
            .into_iter()
            .collect();
        let mut below = descendants(1, &parents);
        below.sort_unstable();
        assert_eq!(below, [2, 3, 4, 5]);
        assert!(descendants(4, &parents).is_empty());
    }
}
