//! Debian's `microsocks` as a real SOCKS5 backend on an ephemeral loopback
//! port (or inside a test namespace), killed and reaped on drop.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// A running `microsocks` child process.
#[derive(Debug)]
pub struct Microsocks {
    child: Child,
    addr: SocketAddr,
}

impl Microsocks {
    /// Starts `microsocks -i 127.0.0.1 -p PORT` on a free port and waits
    /// (at most 5 s) until it accepts connections.
    pub fn start() -> Result<Self> {
        crate::require_command("microsocks", "microsocks");
        // Ask the kernel for a free port, release it, hand it to microsocks:
        // a race with another process is possible, so retry a few times.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let child = Command::new("microsocks")
                .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn microsocks")?;
            let mut socks = Self { child, addr };
            if socks.wait_ready(|| TcpStream::connect(addr).is_ok())? {
                return Ok(socks);
            }
        }
        bail!("microsocks did not start on any of 5 free ports")
    }

    /// Starts `microsocks` inside `ns`, listening on `ip` there, and waits
    /// until it accepts connections from inside the namespace.
    pub fn start_in(ns: &NetNs, ip: Ipv4Addr, port: u16) -> Result<Self> {
        crate::require_command("microsocks", "microsocks");
        let addr = SocketAddr::from((ip, port));
        let child = ns
            .command("microsocks")
            .args(["-i", &ip.to_string(), "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn microsocks in netns")?;
        let mut socks = Self { child, addr };
        if socks.wait_ready(|| {
            ns.run(move || TcpStream::connect(addr).is_ok())
                .unwrap_or(false)
        })? {
            return Ok(socks);
        }
        bail!("microsocks in {} did not accept on {addr}", ns.name())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `Ok(true)` once `accepts()` holds, `Ok(false)` if the child exited or
    /// 5 s passed.
    fn wait_ready(&mut self, accepts: impl Fn() -> bool) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if accepts() {
                return Ok(true);
            }
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }
}

impl Drop for Microsocks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn microsocks_answers_a_socks5_greeting_and_is_gone_after_drop() {
        let socks = Microsocks::start().expect("microsocks");
        let addr = socks.addr();
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(&[5, 1, 0]).expect("greeting");
        let mut reply = [0; 2];
        stream.read_exact(&mut reply).expect("reply");
        assert_eq!(reply, [5, 0]);
        drop(socks);
        assert!(TcpStream::connect(addr).is_err(), "killed on drop");
    }
}
