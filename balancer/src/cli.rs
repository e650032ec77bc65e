//! The command line: every subcommand, flag and help text (clap derive).
//! Parsing only; `cmd` runs what was asked.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{BackendAddress, Engine};

const EXAMPLES: &str = "\
Examples:
  # Three local SOCKS5 proxies behind one SOCKS5 endpoint on 127.0.0.1:1080
  balancer run --backend 127.0.0.1:1081-1083

  # Everything from a file (see examples/balancer.yaml)
  balancer check --config /etc/balancer.yaml
  balancer run --config /etc/balancer.yaml

  # Per-backend figures of the running instance, refreshed every 2 s
  balancer stats --config /etc/balancer.yaml --watch

  # Transparent proxying: install the iptables rules for redirect/tproxy listeners
  balancer iptables print --config /etc/balancer.yaml
  sudo balancer iptables apply --config /etc/balancer.yaml

Logging: RUST_LOG=debug (or e.g. RUST_LOG=balancer=debug); the default is info.
Exit codes: 0 ok, 1 runtime failure, 2 usage error or invalid config.";

/// Load-balances TCP over upstream SOCKS5 proxies; forwards in the kernel.
#[derive(Debug, Parser)]
#[command(
    name = "balancer",
    version,
    long_about = "Load-balances TCP connections over a pool of upstream SOCKS5 proxies.\n\n\
        Clients connect as SOCKS5 clients, as plain TCP to a SOCKS5-speaking backend, or \
        transparently through iptables REDIRECT/TPROXY. For each connection the daemon picks a \
        healthy backend, performs the SOCKS5 handshake with it (failing over to another backend \
        on error), then lets a BPF sockmap program forward the bytes in the kernel (or \
        splice(2) where BPF is unavailable).",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    // `about` rather than a doc comment, which would also replace the
    // long_about of the args struct.
    #[command(about = "Run the daemon")]
    Run(RunArgs),
    /// Show the per-backend figures of a running instance.
    // On the variant: the doc comment above would reset a long_about set on
    // the args struct.
    #[command(
        long_about = "Show the per-backend figures of a running instance.\n\n\
            The daemon rewrites /run/balancer/<instance>/status.json every second; this command \
            reads it and prints one row per backend: breaker state, open connections, attempts, \
            success rate over the outcome window of attempts and probes (`-` while unknown), \
            failed attempts, health probes ok/failed, latency EMA, and bytes forwarded each way (the kernel's counters for sockmap, user space's \
            for splice). With --watch it also shows each backend's throughput since the \
            previous sample. The instance is --instance, else the `instance` of --config, else \
            `default`.\n\n\
            Exits 1 with a one-line reason when the instance is not running (no status file, \
            its pid has exited, or the file is older than 5 s).",
        after_help = "Examples:\n  \
            balancer stats                                  # instance `default`\n  \
            balancer stats --config /etc/balancer.yaml      # the file's instance\n  \
            balancer stats --instance edge --watch          # refresh every 2 s until Ctrl-C\n  \
            balancer stats --instance edge --watch 10       # every 10 s\n  \
            balancer stats --json | jq '.backends[] | {name, bytes_up, bytes_down}'\n\n\
            With --json --watch, one JSON document per line, one line per sample."
    )]
    Stats(StatsArgs),
    /// Validate a config file and print its listeners and expanded backends.
    #[command(after_help = "Exits 0 when the file is valid, 2 (with the reason) otherwise.")]
    Check(CheckArgs),
    #[command(about = "Print, install or remove the iptables rules for redirect/tproxy listeners")]
    Iptables(IptablesArgs),
}

#[derive(Debug, Clone, Args)]
#[command(
    long_about = "Run the daemon.\n\n\
        Takes a config file, or builds one from --backend flags: one socks5 listener on \
        127.0.0.1:1080 (or --listen) and every default. With both, --backend adds to the file's \
        backends. --listen replaces the file's listeners with one socks5 listener; --engine \
        overrides forwarding.engine. The result is validated before anything is bound.\n\n\
        SIGHUP re-reads --config with the same flags: backends, balancing.* and the probe \
        settings change live; an invalid file is logged and ignored; keys that need a restart \
        are named in a warning.",
    after_help = "Examples:\n  \
        balancer run --backend 127.0.0.1:1081 --backend '[::1]:1090'\n  \
        balancer run --backend proxy.lan:1080-1089 --listen 0.0.0.0:1080 --engine splice\n  \
        balancer run --config /etc/balancer.yaml"
)]
pub struct RunArgs {
    /// YAML config file.
    #[arg(short, long, value_name = "FILE", env = "BALANCER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Upstream SOCKS5 proxy: HOST:PORT or HOST:FIRST-LAST (one backend per port);
    /// IPv6 hosts in brackets.
    /// Repeatable.
    #[arg(short, long = "backend", value_name = "ADDR")]
    pub backends: Vec<BackendAddress>,
    /// Address of the single socks5 listener [default without --config: 127.0.0.1:1080].
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Forwarding engine (overrides forwarding.engine).
    #[arg(short, long, value_enum, value_name = "ENGINE")]
    pub engine: Option<EngineArg>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// YAML config file; its `instance` names the daemon to ask.
    #[arg(short, long, value_name = "FILE", conflicts_with = "instance")]
    pub config: Option<PathBuf>,
    /// Instance name (the config's `instance`) [default: default].
    #[arg(short, long, value_name = "NAME")]
    pub instance: Option<String>,
    /// Print the status as JSON (every field, exact byte counts) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until Ctrl-C.
    #[arg(
        short,
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// YAML config file.
    #[arg(short, long, value_name = "FILE", env = "BALANCER_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Print, install or remove the netfilter rules and policy routes that bring \
        traffic to redirect and tproxy listeners.\n\n\
        Rules live in the chain BALANCER-<instance> of the nat (redirect) and mangle (tproxy) \
        tables, reached by jumps from OUTPUT/PREROUTING; they skip packets carrying \
        forwarding.mark, local destinations and the backends' addresses. IPv4 uses iptables, \
        IPv6 ip6tables. `apply` is idempotent and makes the chain match the file; `remove` \
        deletes the jumps, the chains, and the ip rule/route of tproxy.",
    after_help = "Examples:\n  \
        balancer iptables print --config /etc/balancer.yaml > rules.sh\n  \
        balancer iptables apply --config /etc/balancer.yaml\n  \
        balancer iptables remove --config /etc/balancer.yaml"
)]
pub struct IptablesArgs {
    #[command(subcommand)]
    pub action: IptablesAction,
}

#[derive(Debug, Subcommand)]
pub enum IptablesAction {
    /// Print the commands as shell lines; nothing is changed.
    Print {
        #[command(flatten)]
        file: ConfigFile,
        /// Print the removal commands instead.
        #[arg(long)]
        remove: bool,
    },
    /// Install the rules (idempotent: running it twice leaves one copy).
    Apply {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Remove what `apply` installed.
    Remove {
        #[command(flatten)]
        file: ConfigFile,
    },
}

#[derive(Debug, Args)]
pub struct ConfigFile {
    /// YAML config file.
    #[arg(short, long, value_name = "FILE", env = "BALANCER_CONFIG")]
    pub config: PathBuf,
}

/// `--engine` values; mirrors [`Engine`] so that config stays free of clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// Sockmap if it loads and passes its self-test, splice otherwise.
    Auto,
    /// Sockmap or fail to start.
    Sockmap,
    /// splice(2) through pipes.
    Splice,
}

impl From<EngineArg> for Engine {
    fn from(arg: EngineArg) -> Self {
        match arg {
            EngineArg::Auto => Self::Auto,
            EngineArg::Sockmap => Self::Sockmap,
            EngineArg::Splice => Self::Splice,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_accepts_repeated_backends_including_ranges_and_ipv6() {
        let cli = Cli::try_parse_from([
            "balancer",
            "run",
            "--backend",
            "127.0.0.1:1081-1083",
            "--backend",
            "[::1]:1090",
            "--engine",
            "splice",
        ])
        .expect("valid command line");
        let Command::Run(args) = cli.command else {
            panic!("expected run, got {:?}", cli.command);
        };
        assert_eq!(args.backends.len(), 2);
        assert_eq!(args.backends[0].len(), 3);
        assert_eq!(args.engine, Some(EngineArg::Splice));
    }

    #[test]
    fn malformed_backend_flag_is_a_usage_error_with_the_reason() {
        let err = Cli::try_parse_from(["balancer", "run", "--backend", "1.2.3.4:90-80"])
            .expect_err("reversed range");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("reversed"), "{err}");
    }

    #[test]
    fn stats_takes_an_instance_or_a_config_and_watch_defaults_to_two_seconds() {
        let cli = Cli::try_parse_from(["balancer", "stats", "--instance", "edge", "--watch"])
            .expect("valid command line");
        let Command::Stats(args) = cli.command else {
            panic!("expected stats, got {:?}", cli.command);
        };
        assert_eq!(args.instance.as_deref(), Some("edge"));
        assert_eq!(args.watch, Some(2));
        assert!(!args.json);
        let cli = Cli::try_parse_from(["balancer", "stats", "-c", "f.yaml", "--json", "-w", "5"])
            .expect("valid command line");
        let Command::Stats(args) = cli.command else {
            panic!("expected stats, got {:?}", cli.command);
        };
        assert_eq!(args.watch, Some(5));
        assert!(args.json);
        let both = Cli::try_parse_from(["balancer", "stats", "-c", "f.yaml", "-i", "x"]);
        assert_eq!(both.expect_err("conflict").exit_code(), 2);
        let zero = Cli::try_parse_from(["balancer", "stats", "--watch", "0"]);
        assert_eq!(zero.expect_err("zero interval").exit_code(), 2);
    }

    #[test]
    fn stats_long_help_explains_the_status_file_and_shows_examples() {
        let mut cli = Cli::command();
        let stats = cli.find_subcommand_mut("stats").expect("stats subcommand");
        let help = stats.render_long_help().to_string();
        for needle in [
            "status.json",
            "Exits 1",
            "Examples:",
            "--watch 10",
            "--json",
        ] {
            assert!(help.contains(needle), "{needle} missing:\n{help}");
        }
    }

    #[test]
    fn iptables_subcommands_require_a_config_file() {
        let err = Cli::try_parse_from(["balancer", "iptables", "apply"]).expect_err("no config");
        assert_eq!(err.exit_code(), 2);
        let ok = Cli::try_parse_from(["balancer", "iptables", "print", "--remove", "-c", "f.yaml"]);
        assert!(ok.is_ok());
    }
}
