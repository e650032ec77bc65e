//! `balancer check`: loads and validates a config file and prints what the
//! daemon would run: listeners, backends after port-range expansion, the
//! main settings and whether iptables rules are needed.

use std::{fmt::Write as _, path::Path};

use crate::{
    cli::CheckArgs,
    config::{Config, ListenerConfig},
    iptables::Plan,
};

/// # Errors
/// The [`crate::config::ConfigError`] of an unreadable or invalid file.
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    print!("{}", render(&config, &args.config));
    Ok(())
}

/// The report `check` prints for a valid config.
#[must_use]
pub fn render(config: &Config, path: &Path) -> String {
    let mut out = String::new();
    let backends = config.expanded_backends();
    let _ = writeln!(
        out,
        "{}: valid (instance `{}`)\n",
        path.display(),
        config.instance
    );

    let _ = writeln!(out, "listeners ({}):", config.listeners.len());
    let rows: Vec<Vec<String>> = config.listeners.iter().map(listener_row).collect();
    out.push_str(&table(&["NAME", "MODE", "BIND", "AUTH", "POOL"], &rows));

    let _ = writeln!(
        out,
        "\nbackends ({} after expanding port ranges):",
        backends.len()
    );
    let rows: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                b.address(),
                b.weight.to_string(),
                b.scope.clone().unwrap_or_else(|| "-".into()),
                if b.backup { "yes" } else { "no" }.into(),
                b.engine.label().into(),
                b.username.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NAME", "ADDRESS", "WEIGHT", "SCOPE", "BACKUP", "ENGINE", "USERNAME",
        ],
        &rows,
    ));

    let b = &config.balancing;
    let f = &config.forwarding;
    let _ = writeln!(
        out,
        "\nbalancing: {} (max_attempts {}), engine: {}, connect_timeout: {}, handshake_timeout: {}",
        b.strategy, b.max_attempts, f.engine, f.connect_timeout, f.handshake_timeout
    );
    let _ = match config.metrics.listen {
        Some(addr) => writeln!(
            out,
            "metrics: http://{addr}/metrics, dashboard: http://{addr}/"
        ),
        None => writeln!(out, "metrics: disabled"),
    };
    let plan = Plan::for_config(config);
    if !plan.is_empty() {
        let _ = writeln!(
            out,
            "iptables: {} commands needed (balancer iptables print --config {})",
            plan.add_commands().len(),
            path.display()
        );
    }
    out
}

fn listener_row(l: &ListenerConfig) -> Vec<String> {
    let auth = match &l.auth {
        None => "none".to_owned(),
        Some(a) if a.required => format!("required ({} users)", a.users.len()),
        Some(a) => format!("optional ({} users)", a.users.len()),
    };
    vec![
        l.name.clone(),
        l.mode.to_string(),
        l.bind.to_string(),
        auth,
        l.pool.clone().unwrap_or_else(|| "all".into()),
    ]
}

/// Left-aligned columns, two spaces apart, indented by two.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("  {}\n", text.join("  ").trim_end())
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_every_expanded_backend_and_listener_without_secrets() {
        let config = Config::parse(
            "listeners: [{ name: s, mode: socks5, bind: \"127.0.0.1:1080\", auth: { users: [{ username: c, password: pw-client }] } }]\n\
             backends:\n  - { address: \"127.0.0.1:1081-1083\", name: pool }\n  - { address: \"[::1]:1090\", username: alice, password: pw-backend, engine: splice }\n",
        )
        .expect("valid");
        let report = render(&config, Path::new("b.yaml"));
        assert!(
            report.contains("backends (4 after expanding port ranges)"),
            "{report}"
        );
        for name in [
            "pool-1",
            "pool-2",
            "pool-3",
            "127.0.0.1:1083",
            "[::1]:1090",
            "alice",
        ] {
            assert!(report.contains(name), "missing {name}:\n{report}");
        }
        assert!(report.contains("required (1 users)"), "{report}");
        // Each backend's engine choice, in its own column.
        let engine = |name: &str| {
            report
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split_whitespace().nth(5))
                .unwrap_or_else(|| panic!("no row for {name}:\n{report}"))
                .to_owned()
        };
        assert_eq!(engine("pool-1"), "auto", "{report}");
        assert_eq!(engine("[::1]:1090"), "splice", "{report}");
        assert!(!report.contains("pw-"), "{report}");
        assert!(!report.contains("iptables"), "{report}");
    }

    #[test]
    fn table_aligns_columns_to_the_widest_cell() {
        let t = table(&["A", "B"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "  A     B\n  long  x\n");
    }
}
