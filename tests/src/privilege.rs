//! What a test needs from the machine, checked up front. A missing privilege
//! or binary is a failure that names what is missing: never a silent skip.

use std::process::Command;

/// Panics unless the process runs as root (euid 0), naming `needed_for`.
/// Network namespaces, veth, BPF and iptables all need it.
pub fn require_root(needed_for: &str) {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test needs root (euid 0, CAP_NET_ADMIN and CAP_BPF) for {needed_for}; \
         it runs as euid {euid}: run it as root, do not skip it"
    );
}

/// Panics unless `program` runs (`program --version` or `-h` starts), naming
/// the Debian package that provides it.
pub fn require_command(program: &str, debian_package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{program}` on PATH: apt-get install {debian_package}"
    );
}

/// Raises the soft `RLIMIT_NOFILE` to at least `wanted` (and the hard limit
/// too when running as root). Returns the soft limit now in force.
pub fn raise_nofile_limit(wanted: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit struct for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = wanted;
    limit.rlim_max = limit.rlim_max.max(wanted);
    // SAFETY: `limit` is a valid rlimit struct; the kernel only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nofile_limit_is_at_least_what_was_asked_for() {
        let now = raise_nofile_limit(256).expect("rlimit");
        assert!(now >= 256);
    }

    #[test]
    #[should_panic(expected = "apt-get install no-such-package")]
    fn a_missing_command_names_its_package() {
        require_command("no-such-program-balancer-tests", "no-such-package");
    }
}
