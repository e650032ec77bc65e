//! Runs the commands a [`Plan`] describes, for `balancer iptables` and for
//! a daemon with `transparent.manage_rules`. [`apply`] checks before adding,
//! so a second run changes nothing; it re-creates the content of our chains
//! so that they follow the current file. [`remove`] deletes the jumps, the
//! chains and the routing entries that `apply` added, and nothing else.

use std::process::{Command, Output};

use super::{Check, Item, Plan, shell_line};

/// Bound on deleting duplicates of one item (a human may have added copies
/// by hand); one is the normal case.
const MAX_DELETE_ROUNDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("cannot run `{command}`: {error} (is iptables/iproute2 installed?)")]
    Spawn {
        command: String,
        error: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`{command}` still succeeds after {MAX_DELETE_ROUNDS} deletions")]
    WillNotGoAway { command: String },
}

/// Where commands run: on this host, or inside a network namespace.
#[derive(Debug, Clone, Default)]
pub struct Runner {
    prefix: Vec<String>,
}

impl Runner {
    /// Runs commands in the current network namespace.
    #[must_use]
    pub fn host() -> Self {
        Self::default()
    }

    /// Runs every command through `ip netns exec <name>`.
    #[must_use]
    pub fn in_netns(name: &str) -> Self {
        Self {
            prefix: ["ip", "netns", "exec", name].map(String::from).to_vec(),
        }
    }

    fn output(&self, argv: &[String]) -> Result<Output, IptablesError> {
        let full: Vec<&String> = self.prefix.iter().chain(argv).collect();
        let (program, args) = full.split_first().ok_or_else(|| IptablesError::Spawn {
            command: String::new(),
            error: std::io::Error::other("empty command"),
        })?;
        Command::new(program)
            .args(args)
            .output()
            .map_err(|error| IptablesError::Spawn {
                command: shell_line(argv),
                error,
            })
    }

    /// Runs `argv` and fails unless it exits 0.
    ///
    /// # Errors
    /// [`IptablesError::Spawn`] or [`IptablesError::Failed`] with stderr.
    pub fn run(&self, argv: &[String]) -> Result<Output, IptablesError> {
        tracing::debug!(command = %shell_line(argv), "running");
        let out = self.output(argv)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(IptablesError::Failed {
                command: shell_line(argv),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Whether `check` finds its item installed.
    ///
    /// # Errors
    /// [`IptablesError::Spawn`] only: a failing check means "absent".
    pub fn is_installed(&self, check: &Check) -> Result<bool, IptablesError> {
        Ok(match check {
            Check::Succeeds(argv) => self.output(argv)?.status.success(),
            Check::PrintsSomething(argv) => {
                let out = self.output(argv)?;
                out.status.success() && !out.stdout.trim_ascii().is_empty()
            }
        })
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Commands that added something.
    pub added: usize,
    /// Items found already in place.
    pub present: usize,
}

/// Installs `plan`; running it again adds nothing.
///
/// # Errors
/// The first command that could not run or failed.
pub fn apply(plan: &Plan, runner: &Runner) -> Result<Applied, IptablesError> {
    let mut applied = Applied::default();
    for item in &plan.items {
        if runner.is_installed(&item.check())? {
            applied.present += 1;
        } else {
            runner.run(&item.add())?;
            applied.added += 1;
        }
        if let Some(flush) = item.flush() {
            // Our chain's rules follow; start it empty so it equals the plan.
            runner.run(&flush)?;
        }
    }
    Ok(applied)
}

/// Rules a daemon installed for itself (`transparent.manage_rules`): removed
/// when this is dropped, so an error return or a panic after the rules went
/// in takes them out again.
#[derive(Debug)]
pub struct Managed {
    plan: Plan,
    runner: Runner,
}

impl Managed {
    /// Applies `plan`; on failure removes whatever part went in.
    ///
    /// # Errors
    /// The first command that could not run or failed.
    pub fn apply(plan: Plan, runner: Runner) -> Result<(Self, Applied), IptablesError> {
        // Built first: its drop cleans up a half-applied plan.
        let managed = Self { plan, runner };
        let applied = apply(&managed.plan, &managed.runner)?;
        Ok((managed, applied))
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        match remove(&self.plan, &self.runner) {
            Ok(deleted) => tracing::info!(deleted, "iptables rules removed"),
            Err(error) => tracing::error!(
                %error,
                "cannot remove the iptables rules this daemon applied; run `balancer iptables remove`"
            ),
        }
    }
}

/// Removes what [`apply`] installed for `plan`; returns how many commands
/// deleted something. Removing twice is harmless.
///
/// # Errors
/// The first command that could not run or failed.
pub fn remove(plan: &Plan, runner: &Runner) -> Result<usize, IptablesError> {
    let mut deleted = 0;
    for item in plan.removal_order() {
        if matches!(item, Item::ChainRule { .. }) {
            continue; // goes with the chain
        }
        let check = item.check();
        let mut rounds = 0;
        while runner.is_installed(&check)? {
            if rounds == MAX_DELETE_ROUNDS {
                return Err(IptablesError::WillNotGoAway {
                    command: shell_line(&item.add()),
                });
            }
            for command in item.delete() {
                runner.run(&command)?;
                deleted += 1;
            }
            rounds += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::Config;

    /// A network namespace owned by a test, deleted on drop (panics too).
    struct NetNs {
        name: String,
    }

    impl NetNs {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "blc-ipt-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("run `ip netns add` (needs iproute2)");
            assert!(
                status.success(),
                "`ip netns add {name}` failed: this test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
            );
            let ns = Self { name };
            ns.runner()
                .run(&["ip", "link", "set", "lo", "up"].map(String::from))
                .expect("bring lo up in the test namespace");
            ns
        }

        fn runner(&self) -> Runner {
            Runner::in_netns(&self.name)
        }

        /// Everything our commands can touch, as text.
        fn state(&self) -> String {
            let r = self.runner();
            let mut out = String::new();
            for cmd in [
                &["iptables-save"][..],
                &["ip6tables-save"],
                &["ip", "-4", "rule", "show"],
                &["ip", "-6", "rule", "show"],
                &["ip", "-4", "route", "show", "table", "all"],
                &["ip", "-6", "route", "show", "table", "all"],
            ] {
                let argv: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
                let text = r.run(&argv).expect("inspect namespace state").stdout;
                // iptables-save stamps the time; ip route lists lo's own
                // routes, which are ours to compare too.
                for line in String::from_utf8_lossy(&text).lines() {
                    if !line.starts_with('#') {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            out
        }
    }

    impl Drop for NetNs {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn test_config() -> Config {
        Config::parse(
            "instance: nstest\n\
             forwarding: { mark: 4919 }\n\
             transparent: { tproxy_mark: 2, route_table: 102 }\n\
             listeners:\n\
             \x20 - { name: r, mode: redirect, bind: \"[::]:12345\" }\n\
             \x20 - { name: t, mode: tproxy, bind: \"[::]:12346\" }\n\
             backends:\n\
             \x20 - { address: \"10.1.0.2:1080-1089\" }\n\
             \x20 - { address: \"[fd00::2]:1080\" }\n",
        )
        .expect("test config is valid")
    }

    fn our_lines(state: &str) -> Vec<&str> {
        state
            .lines()
            .filter(|l| {
                l.contains("BALANCER-nstest") || l.contains("lookup 102") || l.contains("table 102")
            })
            .collect()
    }

    #[test]
    fn apply_twice_leaves_one_copy_and_remove_restores_the_namespace() {
        let ns = NetNs::new();
        let runner = ns.runner();
        let plan = Plan::for_config(&test_config());
        // Listing does not create nat and mangle under nf_tables; a chain
        // created and deleted does, so the baseline lists their built-in
        // chains as the end state will.
        for tool in ["iptables", "ip6tables"] {
            for table in ["nat", "mangle"] {
                for op in ["-N", "-X"] {
                    let argv = [tool, "-w", "-t", table, op, "BASELINE"];
                    runner
                        .run(&argv.map(String::from))
                        .expect("create the table");
                }
            }
        }
        let before = ns.state();

        let first = apply(&plan, &runner).expect("first apply");
        assert_eq!(first.present, 0);
        assert_eq!(first.added, plan.items.len());
        let once = ns.state();
        let ours = our_lines(&once);
        // Every item is one line: a chain declaration, a rule in it, a jump,
        // an ip rule or a route (two families, two tables).
        assert_eq!(ours.len(), plan.items.len(), "{once}");

        let second = apply(&plan, &runner).expect("second apply");
        let chains = plan
            .items
            .iter()
            .filter(|i| matches!(i, Item::Chain { .. }))
            .count();
        let rules = plan
            .items
            .iter()
            .filter(|i| matches!(i, Item::ChainRule { .. }))
            .count();
        // Chains are refilled on purpose; everything else is left alone.
        assert_eq!(second.added, rules);
        assert_eq!(second.present, plan.items.len() - rules);
        assert_eq!(chains, 4);
        assert_eq!(ns.state(), once, "second apply changed the namespace");

        let deleted = remove(&plan, &runner).expect("remove");
        assert!(deleted > 0);
        let after = ns.state();
        assert!(our_lines(&after).is_empty(), "left behind:\n{after}");
        assert_eq!(after, before);
        assert_eq!(remove(&plan, &runner).expect("second remove"), 0);
    }

    #[test]
    fn managed_rules_are_in_place_while_held_and_gone_once_dropped() {
        let ns = NetNs::new();
        let plan = Plan::for_config(&test_config());
        let items = plan.items.len();

        let (managed, applied) = Managed::apply(plan, ns.runner()).expect("apply");
        assert_eq!(applied.added, items);
        let held = ns.state();
        assert_eq!(our_lines(&held).len(), items, "{held}");

        drop(managed);
        let after = ns.state();
        assert!(our_lines(&after).is_empty(), "left behind:\n{after}");
    }

    #[test]
    fn remove_deletes_a_duplicated_jump_added_by_hand() {
        let ns = NetNs::new();
        let runner = ns.runner();
        let plan = Plan::for_config(&test_config());
        apply(&plan, &runner).expect("apply");
        let jump = plan
            .items
            .iter()
            .find(|i| matches!(i, Item::Jump { .. }))
            .expect("plan has a jump");
        runner.run(&jump.add()).expect("duplicate the jump");
        remove(&plan, &runner).expect("remove");
        assert!(our_lines(&ns.state()).is_empty());
    }

    /// Runs `f` on a thread that has entered the namespace, so its sockets
    /// live there.
    fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(format!("/run/netns/{}", ns.name))
                        .expect("open the namespace file");
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the test namespace");
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }

    #[test]
    fn applied_redirect_rules_divert_tcp_except_marked_and_backend_traffic() {
        use std::{
            net::{SocketAddr, TcpListener, TcpStream},
            time::Duration,
        };
        let ns = NetNs::new();
        let runner = ns.runner();
        for cmd in [
            &[
                "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
            ][..],
            &["ip", "link", "set", "v0", "up"],
            &["ip", "addr", "add", "10.9.0.1/24", "dev", "v0"],
        ] {
            runner
                .run(&cmd.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("set up v0");
        }
        let listener = in_ns(&ns, || {
            TcpListener::bind("127.0.0.1:0").expect("bind in namespace")
        });
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("listener address").port();
        let config = Config::parse(&format!(
            "instance: nsredir\nforwarding: {{ mark: 4919 }}\n\
             listeners: [{{ name: r, mode: redirect, bind: \"127.0.0.1:{port}\" }}]\n\
             backends: [{{ address: \"10.9.0.3:1080\" }}]\n"
        ))
        .expect("valid config");
        apply(&Plan::for_config(&config), &runner).expect("apply");

        let timeout = Duration::from_millis(300);
        let target: SocketAddr = "10.9.0.2:80".parse().expect("address");
        let backend: SocketAddr = "10.9.0.3:1080".parse().expect("address");
        let (plain, marked, to_backend) = in_ns(&ns, || {
            let plain = TcpStream::connect_timeout(&target, timeout).map(drop);
            let marked = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .and_then(|s| {
                    s.set_mark(4919)?;
                    s.connect_timeout(&target.into(), timeout)
                });
            let to_backend = TcpStream::connect_timeout(&backend, timeout).map(drop);
            (plain, marked, to_backend)
        });
        // Only the unmarked connection to a non-backend reaches the listener;
        // the others go out v0, where nothing answers.
        assert!(
            plain.is_ok(),
            "unmarked connection was not redirected: {plain:?}"
        );
        assert!(marked.is_err(), "marked connection was redirected");
        assert!(
            to_backend.is_err(),
            "connection to a backend was redirected"
        );
        let (_, peer) = listener
            .accept()
            .expect("the redirected connection is queued");
        // REDIRECT rewrites the destination only: the source is still the
        // address the route to 10.9.0.2 chose.
        assert_eq!(peer.ip().to_string(), "10.9.0.1");
        assert!(
            listener.accept().is_err(),
            "more than one connection was redirected"
        );
    }

    #[test]
    fn failing_command_reports_its_stderr() {
        let ns = NetNs::new();
        let err = ns
            .runner()
            .run(&["iptables", "-w", "-t", "nat", "-X", "NO-SUCH-CHAIN"].map(String::from))
            .expect_err("chain does not exist");
        assert!(
            matches!(&err, IptablesError::Failed { command, stderr, .. } if command.contains("NO-SUCH-CHAIN") && !stderr.is_empty()),
            "{err}"
        );
    }
}
