//! Runs external commands: echoes each one, and turns a failure to start or
//! a non-zero exit into an error that names the command.

use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};

use anyhow::{Context as _, Result, bail};

pub use std::process::Command;

/// The command as a user would type it (program and arguments, quoted where
/// they contain spaces), for messages.
pub fn display(cmd: &Command) -> String {
    let mut words = vec![quote(cmd.get_program())];
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if word.is_empty() || word.contains([' ', '"', '\'', '$']) {
        format!("'{}'", word.replace('\'', r"'\''"))
    } else {
        word.into_owned()
    }
}

/// Starts `cmd` with inherited stdio, waits, and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Starts `cmd` with inherited stdio and returns its exit code (128 + signal
/// number when a signal ended it, as a shell reports it).
pub fn run_exit_code(cmd: &mut Command) -> Result<i32> {
    let status = status(cmd)?;
    Ok(exit_code(status))
}

/// Shell-style exit code of a finished process.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}

fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Runs `cmd` with captured output and returns its stdout; on failure the
/// error carries the command and its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Whether `program --version` runs: a cheap "is it installed" probe.
pub fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_words_a_shell_would_split() {
        let mut cmd = Command::new("curl");
        cmd.args(["-o", "/dev/null", "a b", "it's"]);
        assert_eq!(display(&cmd), r#"curl -o /dev/null 'a b' 'it'\''s'"#);
    }

    #[test]
    fn failing_command_error_names_the_command() {
        let error = run(Command::new("false").arg("--flag")).expect_err("an error");
        assert!(
            error.to_string().contains("`false --flag` failed"),
            "{error}"
        );
    }
}
