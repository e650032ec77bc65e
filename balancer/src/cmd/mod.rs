//! One module per subcommand, each with a `run(args)` that `main` calls, and
//! the mapping of their errors to exit codes (0 ok, 1 runtime failure,
//! 2 usage error or invalid config).

pub mod check;
pub mod iptables;
pub mod run;
pub mod stats;

use crate::config::ConfigError;

/// Exit code for a usage error or an invalid config.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a failure while doing what was asked.
pub const EXIT_FAILURE: u8 = 1;

/// A command line that names no work to do.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(
        "nothing to balance: give a config file with --config FILE (or BALANCER_CONFIG=FILE; \
         see examples/balancer.yaml) or at least one --backend HOST:PORT"
    )]
    NoConfigNoBackends,
    #[error(
        "`{0}` is not a valid instance name: use 1-19 letters, digits, `_` or `-` (see the \
         config's `instance`)"
    )]
    BadInstance(String),
}

/// The exit code for an error returned by a subcommand: 2 when the cause
/// is the command line or the config (anywhere in the chain), 1 otherwise.
#[must_use]
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let usage = error
        .chain()
        .any(|cause| cause.is::<ConfigError>() || cause.is::<UsageError>());
    if usage { EXIT_USAGE } else { EXIT_FAILURE }
}

/// The error chain as one line, `outer: inner: ...`, leaving out a cause
/// whose text its wrapper already printed: several error types put their
/// source in their own message too, and the operator should read each
/// reason once.
#[must_use]
pub fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load: {source}")]
    struct Loud {
        source: std::io::Error,
    }

    #[test]
    fn describe_prints_each_cause_once() {
        let error = anyhow::Error::new(Loud {
            source: std::io::Error::from_raw_os_error(1),
        })
        .context("opening the engine");
        assert_eq!(
            describe(&error),
            format!(
                "opening the engine: cannot load: {}",
                std::io::Error::from_raw_os_error(1)
            )
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }

    #[test]
    fn config_and_usage_errors_exit_2_even_with_context() {
        let config = anyhow::Error::new(ConfigError::Invalid {
            path: None,
            problems: Vec::new(),
        })
        .context("loading");
        assert_eq!(exit_code(&config), EXIT_USAGE);
        let usage: anyhow::Result<()> = Err(UsageError::NoConfigNoBackends.into());
        let usage = usage.context("run").expect_err("is an error");
        assert_eq!(exit_code(&usage), EXIT_USAGE);
    }

    #[test]
    fn other_errors_exit_1() {
        let io = anyhow::Error::new(std::io::Error::other("bind failed"));
        assert_eq!(exit_code(&io), EXIT_FAILURE);
    }
}
