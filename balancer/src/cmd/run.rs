//! `balancer run`: builds the config (file and/or flags), validates it
//! before anything is bound or loaded, starts the tokio runtime, turns
//! SIGINT/SIGTERM into the shared shutdown token and SIGHUP into a reload
//! (the same file and flags, built by the same [`config_from_args`]), and
//! hands over to the daemon through [`start_daemon`].

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    cli::RunArgs,
    cmd::UsageError,
    config::{BackendConfig, Config, ListenerConfig},
};

/// # Errors
/// [`UsageError`] or [`crate::config::ConfigError`] (exit 2) before
/// starting; whatever the daemon returns (exit 1) after.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = config_from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // One pending reload is enough: the daemon applies them in order
        // and each reads the whole file.
        let (reload_tx, reload_rx) = mpsc::channel(1);
        let signals = tokio::spawn(watch_signals(args.clone(), shutdown.clone(), reload_tx));
        let result = start_daemon(config, shutdown, reload_rx).await;
        signals.abort();
        result
    })
}

/// The config `run` uses: the file if given, with `--backend` appended,
/// `--listen` replacing the listeners and `--engine` overriding the engine;
/// validated as a whole.
///
/// # Errors
/// [`UsageError::NoConfigNoBackends`] when there is neither a file nor a
/// backend; the file's [`crate::config::ConfigError`] otherwise.
pub fn config_from_args(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load_unvalidated(path)?,
        None if args.backends.is_empty() => return Err(UsageError::NoConfigNoBackends.into()),
        None => Config::default(),
    };
    config
        .backends
        .extend(args.backends.iter().cloned().map(BackendConfig::new));
    if let Some(bind) = args.listen {
        config.listeners = vec![ListenerConfig::socks5("socks", bind)];
    }
    if let Some(engine) = args.engine {
        config.forwarding.engine = engine.into();
    }
    let validated = config.validate();
    match &args.config {
        Some(path) => validated.map_err(|e| e.with_path(path))?,
        None => validated?,
    }
    Ok(config)
}

/// SIGINT/SIGTERM cancel `shutdown`; SIGHUP re-reads the config and sends
/// it to the daemon when it is valid.
async fn watch_signals(args: RunArgs, shutdown: CancellationToken, reloads: mpsc::Sender<Config>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(|error| {
            tracing::warn!(%error, "cannot watch SIGHUP; config changes need a restart");
        })
        .ok();
    // One future for the whole loop, so a Ctrl-C during a reload is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            Some(()) = async {
                match &mut hup {
                    Some(hup) => hup.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(config) = reload_config(&args)
                    && reloads.send(config).await.is_err()
                {
                    break;
                }
            }
        }
    }
    shutdown.cancel();
}

/// The config a SIGHUP asks for, or `None` (logged) when there is no file
/// or it is not valid: the daemon keeps running as it is.
fn reload_config(args: &RunArgs) -> Option<Config> {
    let Some(path) = &args.config else {
        tracing::warn!("SIGHUP: started without --config, there is no file to reload");
        return None;
    };
    tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
    // A few hundred bytes read once per signal: blocking here is harmless.
    match config_from_args(args) {
        Ok(config) => Some(config),
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "config not reloaded, keeping the running config"
            );
            None
        }
    }
}

/// The single place where `run` connects to the daemon; everything before
/// it (config, runtime, signals) is set up. Returns when the daemon stops.
///
/// # Errors
/// Whatever the daemon fails with.
pub async fn start_daemon(
    config: Config,
    shutdown: CancellationToken,
    reloads: mpsc::Receiver<Config>,
) -> anyhow::Result<()> {
    crate::daemon::run(config, shutdown, reloads).await
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        cli::EngineArg,
        cmd::{EXIT_USAGE, exit_code},
        config::{ConfigError, Engine},
    };

    fn args(backends: &[&str]) -> RunArgs {
        RunArgs {
            config: None,
            backends: backends
                .iter()
                .map(|b| b.parse().expect("valid backend"))
                .collect(),
            listen: None,
            engine: None,
        }
    }

    #[test]
    fn no_config_and_no_backend_is_a_usage_error_naming_both_options() {
        let err = config_from_args(&args(&[])).expect_err("nothing to run");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        let msg = err.to_string();
        assert!(
            msg.contains("--config") && msg.contains("--backend"),
            "{msg}"
        );
    }

    #[test]
    fn backend_flags_alone_give_one_socks5_listener_on_port_1080() {
        let config = config_from_args(&args(&["127.0.0.1:1081-1083"])).expect("valid");
        assert_eq!(config.expanded_backends().len(), 3);
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(
            config.listeners[0].bind,
            SocketAddr::from(([127, 0, 0, 1], 1080))
        );
    }

    #[test]
    fn listen_and_engine_flags_override_the_defaults() {
        let mut a = args(&["127.0.0.1:1081"]);
        a.listen = Some(SocketAddr::from(([0, 0, 0, 0], 2080)));
        a.engine = Some(EngineArg::Splice);
        let config = config_from_args(&a).expect("valid");
        assert_eq!(config.listeners[0].bind.port(), 2080);
        assert_eq!(config.forwarding.engine, Engine::Splice);
    }

    #[test]
    fn a_reload_rebuilds_the_config_with_the_same_flags_and_refuses_a_bad_file() {
        assert!(
            reload_config(&args(&["127.0.0.1:1081"])).is_none(),
            "no file to reload"
        );
        let path =
            std::env::temp_dir().join(format!("balancer-reload-test-{}.yaml", std::process::id()));
        let mut a = args(&["10.0.0.9:1080"]);
        a.config = Some(path.clone());
        a.engine = Some(EngineArg::Splice);
        std::fs::write(&path, "backends:\n  - address: 10.0.0.1:1080\n").expect("write");
        let good = reload_config(&a);
        std::fs::write(&path, "backends: [\n").expect("write");
        let bad = reload_config(&a);
        std::fs::remove_file(&path).expect("remove temp file");
        let good = good.expect("valid file");
        assert_eq!(good.expanded_backends().len(), 2, "--backend still added");
        assert_eq!(
            good.forwarding.engine,
            Engine::Splice,
            "--engine still applies"
        );
        assert!(bad.is_none(), "an unparsable file keeps the running config");
    }

    #[test]
    fn backend_flags_are_added_to_a_file_that_has_none() {
        let path =
            std::env::temp_dir().join(format!("balancer-run-test-{}.yaml", std::process::id()));
        std::fs::write(&path, "instance: from-file\n").expect("write temp file");
        let mut a = args(&[]);
        a.config = Some(path.clone());
        let without = config_from_args(&a);
        a.backends = vec!["10.0.0.1:1080".parse().expect("valid")];
        let with = config_from_args(&a);
        std::fs::remove_file(&path).expect("remove temp file");
        let err = without.expect_err("file has no backends");
        assert!(
            matches!(err.downcast_ref(), Some(ConfigError::Invalid { path: Some(p), .. }) if *p == path),
            "{err}"
        );
        assert_eq!(
            with.expect("flags supply the backend").instance,
            "from-file"
        );
    }
}
