//! CPU time as the kernel counts it: system-wide from the first line of
//! `/proc/stat` (so softirq and kernel workers that forward spliced bytes are
//! included) and per process group from `/proc/<pid>/stat` (a daemon and its
//! worker processes, as dante forks them). Both in seconds.

use std::ops::{AddAssign, Sub};

use anyhow::{Context, Result};

/// Cumulative system-wide CPU seconds by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SystemCpu {
    /// user + nice
    pub user: f64,
    pub system: f64,
    /// irq + softirq
    pub softirq: f64,
    /// idle + iowait: what no one used.
    pub idle: f64,
}

impl SystemCpu {
    pub fn read() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        Self::parse(&stat, ticks_per_second()).context("parse /proc/stat")
    }

    /// Parses the aggregate `cpu` line (fields in clock ticks).
    fn parse(stat: &str, hz: f64) -> Option<Self> {
        let line = stat.lines().find(|line| line.starts_with("cpu "))?;
        let fields: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse::<f64>().ok())
            .collect::<Option<_>>()?;
        let field = |i: usize| fields.get(i).copied().unwrap_or(0.0) / hz;
        Some(Self {
            user: field(0) + field(1),
            system: field(2),
            softirq: field(5) + field(6),
            idle: field(3) + field(4),
        })
    }

    /// Seconds used, by anyone.
    pub fn total(&self) -> f64 {
        self.user + self.system + self.softirq
    }

    /// Share of the machine's CPU time that was used (of a delta): near 1
    /// means the phase was bound by CPU, so its rate is the cores divided
    /// by the CPU one unit of work costs, whoever spends it.
    pub fn busy_share(&self) -> f64 {
        let all = self.total() + self.idle;
        if all > 0.0 { self.total() / all } else { 0.0 }
    }
}

impl AddAssign for SystemCpu {
    fn add_assign(&mut self, other: Self) {
        self.user += other.user;
        self.system += other.system;
        self.softirq += other.softirq;
        self.idle += other.idle;
    }
}

impl Sub for SystemCpu {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            softirq: self.softirq - earlier.softirq,
            idle: self.idle - earlier.idle,
        }
    }
}

/// Cumulative user and system seconds of every process in one process group,
/// with those of its children that it has reaped: dante forks a child per
/// client and its mother reaps them, so counting only the live processes
/// lost every child that ended between two reads (the group's CPU per
/// connection came out at 0-18 µs, its user time above its total).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupCpu {
    pub user: f64,
    pub system: f64,
}

impl GroupCpu {
    /// Sums `utime + cutime` and `stime + cstime` of the live processes whose
    /// group is `pgid`.
    pub fn read(pgid: i32) -> Result<Self> {
        let hz = ticks_per_second();
        let mut sum = Self::default();
        for entry in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some((group, user, system)) = parse_pid_stat(&stat)
                && group == pgid
            {
                sum.user += user / hz;
                sum.system += system / hz;
            }
        }
        Ok(sum)
    }
}

impl AddAssign for GroupCpu {
    fn add_assign(&mut self, other: Self) {
        self.user += other.user;
        self.system += other.system;
    }
}

impl Sub for GroupCpu {
    type Output = Self;
    fn sub(self, earlier: Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// The fields of a `/proc/<pid>/stat` line after the command name, `state`
/// first. The name may contain spaces and parentheses: fields are counted
/// after its last `)`.
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

/// `(pgrp, utime + cutime, stime + cstime)` of a `/proc/<pid>/stat` line.
fn parse_pid_stat(stat: &str) -> Option<(i32, f64, f64)> {
    let fields = stat_fields(stat)?;
    let field = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
    // cutime(13) cstime(14).
    Some((
        fields.get(2)?.parse().ok()?,
        field(11)? + field(13)?,
        field(12)? + field(14)?,
    ))
}

fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

/// Resident set size of `pid` in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib(pid: i32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_vm_rss_kib(&status)
        .map(|kib| kib / 1024.0)
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss_kib(status: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aggregate_cpu_line_splits_into_user_system_and_softirq() {
        let stat = "cpu  100 20 300 9999 5 40 60 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n";
        let cpu = SystemCpu::parse(stat, 100.0).expect("parsed");
        assert_eq!(cpu.user, 1.2);
        assert_eq!(cpu.system, 3.0);
        assert_eq!(cpu.softirq, 1.0);
        assert!((cpu.idle - 100.04).abs() < 1e-9, "{}", cpu.idle);
    }

    #[test]
    fn the_busy_share_is_used_time_over_used_and_idle_time() {
        let before = SystemCpu::parse("cpu  100 0 100 800 0 0 0 0 0 0\n", 100.0).expect("parsed");
        let after = SystemCpu::parse("cpu  250 0 250 900 0 0 0 0 0 0\n", 100.0).expect("parsed");
        let share = (after - before).busy_share();
        assert!((share - 0.75).abs() < 1e-9, "{share}");
        // Two such phases summed keep the share.
        let mut both = after - before;
        both += after - before;
        assert!((both.busy_share() - 0.75).abs() < 1e-9);
        assert!((both.total() - 6.0).abs() < 1e-9, "{}", both.total());
        assert_eq!(SystemCpu::default().busy_share(), 0.0);
    }

    #[test]
    fn a_process_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let stat = "42 (we ird) (x) S 1 42 42 0 -1 0 0 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_pid_stat(stat), Some((42, 250.0, 75.0)));
    }

    #[test]
    fn reaped_children_count_with_their_parent() {
        let stat = "7 (danted) S 1 7 7 0 -1 0 0 0 0 0 100 50 30 20 20 0 1 0";
        assert_eq!(parse_pid_stat(stat), Some((7, 130.0, 70.0)));
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tbalancer\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345.0));
    }
}
