//! Throw-away network namespaces and veth pairs. Names are unique per process
//! and call (`bt<pid>n<counter>`), so parallel tests never collide; `Drop`
//! deletes them even during a panic.

use std::{
    fs::File,
    net::Ipv4Addr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context, Result, bail, ensure};
use nix::sched::{CloneFlags, setns};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn unique(kind: &str) -> String {
    // Interface names are limited to 15 bytes: keep pid and counter short.
    format!(
        "bt{}{kind}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (apt-get install iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A network namespace owned by the test (`ip netns add`), with `lo` up.
/// Deleted on drop (`ip netns del`), which also removes its veth ends.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with a fresh unique name and brings `lo` up.
    pub fn new() -> Result<Self> {
        let name = unique("n");
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip -n NAME` and `ip netns exec NAME` take it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread that entered this namespace (`setns`), and
    /// returns its result. Sockets created inside `f` stay in the namespace
    /// and may be used from any thread afterwards. A panic in `f` is
    /// re-raised here.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        thread::scope(|scope| {
            let handle = scope.spawn(move || -> Result<T> {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {path}"))?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a long-lived thread inside this namespace; the handle yields
    /// `Err` if entering the namespace failed.
    pub fn spawn<T, F>(&self, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        Ok(thread::spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {path}"))?;
            Ok(f())
        }))
    }

    /// A `Command` that runs `program` inside this namespace
    /// (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(cause) = ip(&["netns", "del", &self.name]) {
            eprintln!(
                "balancer_tests: cannot delete netns {}: {cause:#}",
                self.name
            );
        }
    }
}

/// A veth pair between two namespaces, one /30 of 198.18.0.0/15 (RFC 2544
/// benchmarking range: nothing outside the test answers there). Both ends
/// are up. Dropping it deletes the link; deleting either namespace does too.
#[derive(Debug)]
pub struct Veth {
    a_ns: String,
    a_name: String,
    /// Address of the end inside the first namespace.
    pub a_addr: Ipv4Addr,
    /// Address of the end inside the second namespace.
    pub b_addr: Ipv4Addr,
}

impl Veth {
    /// Joins `a` and `b` with a fresh veth pair and addresses both ends.
    pub fn new(a: &NetNs, b: &NetNs) -> Result<Self> {
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        // 2^15 /30 subnets in 198.18.0.0/15; the counter is per process and
        // the pid is folded in so that concurrent test binaries differ.
        let subnet = (index.wrapping_add(std::process::id().wrapping_mul(131))) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + subnet * 4;
        let a_addr = Ipv4Addr::from(base + 1);
        let b_addr = Ipv4Addr::from(base + 2);
        let a_name = unique("a");
        let b_name = unique("b");
        ip(&[
            "link",
            "add",
            &a_name,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b_name,
            "netns",
            b.name(),
        ])?;
        let veth = Self {
            a_ns: a.name().to_owned(),
            a_name,
            a_addr,
            b_addr,
        };
        for (ns, name, addr) in [(a, &veth.a_name, a_addr), (b, &b_name, b_addr)] {
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                name,
            ])?;
            ip(&["-n", ns.name(), "link", "set", name, "up"])?;
        }
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Already gone when its namespace was deleted first: nothing to do.
        let _ = ip(&["-n", &self.a_ns, "link", "del", &self.a_name]);
    }
}

/// Fails unless `name` is no longer listed by `ip netns list`.
pub fn assert_netns_gone(name: &str) -> Result<()> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    if listed
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
    {
        bail!("netns {name} still exists");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn a_namespace_is_removed_on_drop_even_after_a_panic() {
        crate::require_root("network namespaces");
        let name = std::panic::catch_unwind(|| {
            let ns = NetNs::new().expect("netns");
            let name = ns.name().to_owned();
            std::panic::panic_any(name);
        })
        .expect_err("panicked")
        .downcast::<String>()
        .expect("name");
        assert_netns_gone(&name).expect("deleted");
    }

    #[test]
    fn two_namespaces_talk_over_veth() {
        crate::require_root("network namespaces");
        let a = NetNs::new().expect("netns a");
        let b = NetNs::new().expect("netns b");
        let veth = Veth::new(&a, &b).expect("veth");
        let addr = (veth.b_addr, 0);
        let listener = b
            .run(move || TcpListener::bind(addr))
            .expect("run")
            .expect("bind");
        let target = listener.local_addr().expect("addr");
        a.run(move || TcpStream::connect(target))
            .expect("run")
            .expect("connect over veth");
        let (_, peer) = listener.accept().expect("accept");
        assert_eq!(peer.ip(), veth.a_addr);
    }
}
