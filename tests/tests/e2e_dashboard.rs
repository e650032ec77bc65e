//! Black-box: the dashboard at `/` in a real headless Chromium. A daemon
//! with two `microsocks` backends (`alpha`, `beta`) and a checksum target on
//! loopback of a throw-away namespace; Debian's `chromedriver` and
//! `chromium` run inside that namespace too, driven over the WebDriver
//! HTTP protocol by the small client below.
//!
//! The page must load with no console error (an asset from another origin,
//! a script error or a failed request would be one), show both backends,
//! and show their byte counters and throughput move after 32 MiB went
//! through the daemon with checksums verified. A screenshot is written to
//! `<target>/dashboard.png`. Then the daemon is stopped: the page must show
//! its "disconnected" banner, and lose it again once a new daemon answers
//! on the same address.

mod support;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use balancer_tests::{Microsocks, NetNs, require_command, require_root};
use serde_json::{Value, json};
use support::{
    ChecksumTarget, ChunkedBackend, Daemon, Target, chunked_download, expected_digest, fetch,
    free_port, http_exchange, socks_connect, two_backend_config, unique,
};

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const TOKEN: &str = "e2e-dashboard-token";
/// A backend name registered at run time that is markup, to be shown as text.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>&amp;";
/// Connections pushed through the daemon, and what each fetches.
const CONNECTIONS: u64 = 8;
const PER_CONNECTION: u64 = 4 << 20;
/// What the page reads from the DOM: the header, the banner and one object
/// per backend row, all as the text a person sees.
const READ_PAGE: &str = r#"
const text = (root, sel) => { const e = root.querySelector(sel); return e ? e.textContent : null; };
return {
  instance: text(document, '#instance'),
  engine: text(document, '#engine'),
  live: text(document, '#live-text'),
  banner: !document.getElementById('banner').hidden,
  markup: document.querySelectorAll('#backends tbody img, #c-latency-legend img').length,
  rows: Array.from(document.querySelectorAll('#backends tbody tr')).map((tr) => ({
    name: text(tr, '.c-name'),
    address: text(tr, '.c-address'),
    state: text(tr, '.c-state'),
    badges: Array.from(tr.querySelectorAll('.c-state .badge')).map((b) => b.textContent),
    advice: (tr.querySelector('.c-state .badge.advice') || {}).title || null,
    bytes_down: text(tr, '.c-bytes-down'),
    per_skb: text(tr, '.c-per-skb'),
    rate_down: text(tr, '.c-rate-down'),
    peak: text(tr, '.c-peak'),
  })),
};
"#;

/// Headless Chromium behind `chromedriver`, in a namespace. Dropping it
/// ends the session and kills chromedriver's whole process group (the
/// browser's processes included), even when the test panicked.
struct Browser<'ns> {
    ns: &'ns NetNs,
    driver: Child,
    addr: SocketAddr,
    session: Option<String>,
    profile: PathBuf,
    log: PathBuf,
}

impl<'ns> Browser<'ns> {
    /// Starts chromedriver in `ns` and opens a session (at most 30 s).
    fn start(ns: &'ns NetNs) -> Result<Self> {
        let addr = SocketAddr::from((LO, free_port(ns, LO)));
        let name = unique("dash");
        let profile = std::env::temp_dir().join(format!("{name}-profile"));
        let log = std::env::temp_dir().join(format!("{name}-chromedriver.log"));
        std::fs::create_dir_all(&profile)?;
        let driver = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: one signal reaches chromedriver and every
            // browser process it started.
            .process_group(0)
            .spawn()
            .context("spawn chromedriver (apt-get install chromium-driver)")?;
        let mut browser = Self {
            ns,
            driver,
            addr,
            session: None,
            profile,
            log,
        };
        browser.wait_ready()?;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1440,960",
            "--force-device-scale-factor=1",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", browser.profile.display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        }}});
        let created = browser
            .call("POST", "/session", Some(&capabilities))
            .with_context(|| format!("new session; chromedriver log:\n{}", browser.log_tail()))?;
        let id = created["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in {created}"))?;
        browser.session = Some(id.to_owned());
        Ok(browser)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(status) = self.call("GET", "/status", None)
                && status["ready"] == true
            {
                return Ok(());
            }
            if let Some(exit) = self.driver.try_wait()? {
                bail!("chromedriver exited with {exit}:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("chromedriver not ready within 15 s:\n{}", self.log_tail())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// One WebDriver command under the session: its `value`.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let session = self.session.as_deref().context("no session")?;
        self.call(method, &format!("/session/{session}{path}"), body)
    }

    /// One HTTP exchange with chromedriver, from inside the namespace: the
    /// `value` of its JSON answer, or an error naming the WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let addr = self.addr;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let raw = self.ns.run(move || -> std::io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            // Session creation starts the browser: allow it time.
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            stream.write_all(request.as_bytes())?;
            // chromedriver may keep the connection open despite `close`:
            // read until the body is complete, not until EOF.
            let mut raw = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while !response_complete(&raw) {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            Ok(raw)
        })??;
        let (status, json) = parse_http(&raw).with_context(|| format!("{method} {path}"))?;
        let answer: Value = serde_json::from_slice(&json).with_context(|| {
            format!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&json)
            )
        })?;
        ensure!(status == 200, "{method} {path}: HTTP {status}: {answer}");
        Ok(answer["value"].clone())
    }

    fn open(&self, url: &str) -> Result<()> {
        self.command("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    fn execute(&self, script: &str) -> Result<Value> {
        self.command(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Makes the page see `prefers-color-scheme: scheme` (Chrome DevTools
    /// protocol through chromedriver).
    fn color_scheme(&self, scheme: &str) -> Result<()> {
        let params = json!({
            "cmd": "Emulation.setEmulatedMedia",
            "params": { "features": [{ "name": "prefers-color-scheme", "value": scheme }] },
        });
        self.command("POST", "/goog/cdp/execute", Some(&params))
            .map(drop)
    }

    /// Browser console entries since the last call (chromedriver drains
    /// them): `(level, message)`.
    fn console(&self) -> Result<Vec<(String, String)>> {
        let entries = self.command("POST", "/se/log", Some(&json!({ "type": "browser" })))?;
        let entries = entries.as_array().context("log entries are an array")?;
        Ok(entries
            .iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// A PNG of the viewport, checked to be one, written to `path`.
    fn screenshot(&self, path: &Path) -> Result<()> {
        let encoded = self.command("GET", "/screenshot", None)?;
        let png = base64_decode(encoded.as_str().context("screenshot is a string")?)?;
        let (width, height) = png_size(&png)?;
        ensure!(
            width >= 800 && height >= 600,
            "screenshot is {width}x{height}"
        );
        std::fs::write(path, &png).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Runs [`READ_PAGE`] until `done` holds for its answer, at most `within`.
    fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.execute(READ_PAGE)?;
            if done(&last) {
                return Ok(last);
            }
            thread::sleep(Duration::from_millis(200));
        }
        bail!("the page did not show {what} within {within:?}; it shows {last:#}")
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.command("DELETE", "", None);
        }
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether `raw` holds a whole response: the header and `Content-Length`
/// bytes of body, or a chunked body up to its last chunk.
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    head.lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|len| len.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// Status and body of an HTTP/1.1 response (plain or chunked).
fn parse_http(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of header")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let mut body = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        ensure!(body.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", char::from(c)),
        }
        .into())
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = clean
        .strip_suffix(b"==")
        .or_else(|| clean.strip_suffix(b"="))
        .unwrap_or(&clean);
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in data {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff)?);
        }
    }
    Ok(out)
}

/// Width and height of a PNG, after checking its signature, that the first
/// chunk is `IHDR` and the last `IEND`.
fn png_size(png: &[u8]) -> Result<(u32, u32)> {
    ensure!(png.len() > 33 + 12, "PNG of {} bytes", png.len());
    ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "no PNG signature");
    ensure!(&png[12..16] == b"IHDR", "first chunk is not IHDR");
    ensure!(
        &png[png.len() - 8..png.len() - 4] == b"IEND",
        "last chunk is not IEND"
    );
    let width = u32::from_be_bytes(png[16..20].try_into()?);
    let height = u32::from_be_bytes(png[20..24].try_into()?);
    Ok((width, height))
}

/// A size as the page shows it ("12.5 MiB/s", "peak 3.00 KiB", "17 B") in
/// bytes; `None` for "–" or anything else.
fn shown_bytes(text: &str) -> Option<f64> {
    let text = text.trim_start_matches(|c: char| !c.is_ascii_digit());
    let mut parts = text.split_whitespace();
    let number: f64 = parts.next()?.parse().ok()?;
    let unit = parts.next()?.trim_end_matches("/s");
    let power = ["B", "KiB", "MiB", "GiB", "TiB"]
        .iter()
        .position(|u| *u == unit)?;
    Some(number * 1024f64.powi(i32::try_from(power).ok()?))
}

fn row<'v>(page: &'v Value, name: &str) -> Option<&'v Value> {
    page["rows"].as_array()?.iter().find(|r| r["name"] == name)
}

fn row_bytes(page: &Value, name: &str, field: &str) -> Option<f64> {
    row(page, name).and_then(|r| shown_bytes(r[field].as_str()?))
}

/// `<target>/dashboard.png` etc.: the test binary runs from
/// `<target>/<profile>/deps/`.
fn artefact(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("test binary sits in <target>/<profile>/deps")?;
    Ok(target.join(name))
}

fn yaml(
    instance: &str,
    metrics: SocketAddr,
    backends: &[SocketAddr],
    probe_target: SocketAddr,
) -> String {
    format!(
        "instance: {instance}\n\
         listeners:\n  - {{ name: socks, mode: socks5, bind: \"127.0.0.1:0\" }}\n\
         backends:\n  - {{ name: alpha, address: \"{}\" }}\n  - {{ name: beta, address: \"{}\" }}\n\
         balancing: {{ strategy: round_robin, max_attempts: 2 }}\n\
         health: {{ probe: {{ target: \"{probe_target}\", interval: 1s, timeout: 1s }} }}\n\
         forwarding: {{ engine: auto }}\n\
         metrics: {{ listen: \"{metrics}\", token: \"{TOKEN}\" }}\n",
        backends[0], backends[1],
    )
}

/// Pulls `PER_CONNECTION` bytes through the daemon `CONNECTIONS` times,
/// 500 ms apart (so the page sees a few seconds of traffic), each checked
/// against its SHA-256.
fn push_traffic(ns: &NetNs, proxy: SocketAddr, target: SocketAddr) {
    for i in 0..CONNECTIONS {
        let seed = 0xda5b_0000 + i;
        let (got, sha) = ns
            .run(move || -> std::io::Result<(u64, [u8; 32])> {
                let mut stream = socks_connect(proxy, &Target::Addr(target), None)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                fetch(&mut stream, PER_CONNECTION, seed)
            })
            .expect("netns")
            .expect("a connection through the daemon");
        assert_eq!(got, PER_CONNECTION, "connection {i} got {got} bytes");
        assert_eq!(
            sha,
            expected_digest(PER_CONNECTION, seed),
            "connection {i}: checksum"
        );
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_dashboard_shows_live_backends_without_console_errors_and_survives_a_restart() {
    require_root("network namespaces and BPF");
    require_command("chromedriver", "chromium-driver");
    require_command("chromium", "chromium");
    let ns = NetNs::new().expect("netns");
    let target = ChecksumTarget::start(&ns, IpAddr::V4(LO)).expect("target");
    let socks: Vec<Microsocks> = (0..3)
        .map(|_| Microsocks::start_in(&ns, LO, free_port(&ns, LO)).expect("microsocks"))
        .collect();
    let backends: Vec<SocketAddr> = socks.iter().map(Microsocks::addr).collect();
    // The third backend is registered at run time, under HOSTILE_NAME.
    let metrics = SocketAddr::from((LO, free_port(&ns, LO)));
    let instance = unique("dash");
    let config = yaml(&instance, metrics, &backends, target.addr());
    let daemon = Daemon::start(&ns, &instance, &config).expect("daemon");
    let proxy = daemon.listener("socks");

    let browser = Browser::start(&ns).expect("chromedriver and chromium");
    browser
        .open(&format!("http://{metrics}/"))
        .expect("open the dashboard");
    let before = browser
        .wait_for(Duration::from_secs(15), "both backends", |page| {
            page["instance"] == instance.as_str()
                && row(page, "alpha").is_some()
                && row(page, "beta").is_some()
                && row_bytes(page, "alpha", "bytes_down").is_some()
        })
        .expect("page with both backends");
    for (name, addr) in [("alpha", backends[0]), ("beta", backends[1])] {
        let shown = row(&before, name)
            .and_then(|r| r["address"].as_str())
            .unwrap_or_default();
        assert!(shown.contains(&addr.to_string()), "{name} shows {shown:?}");
    }
    let baseline = |name| row_bytes(&before, name, "bytes_down").unwrap_or(0.0);
    let (alpha0, beta0) = (baseline("alpha"), baseline("beta"));

    push_traffic(&ns, proxy, target.addr());
    let pushed = (CONNECTIONS * PER_CONNECTION) as f64;
    let after = browser
        .wait_for(
            Duration::from_secs(10),
            "the pushed bytes and a throughput peak",
            |page| {
                let moved =
                    |name| row_bytes(page, name, "bytes_down").unwrap_or(0.0) - baseline(name);
                let peaked = |name| row_bytes(page, name, "peak").is_some_and(|peak| peak > 0.0);
                // Display rounding: at most 0.5 % under the true count.
                moved("alpha") + moved("beta") >= pushed * 0.995
                    && moved("alpha") > 0.0
                    && moved("beta") > 0.0
                    && peaked("alpha")
                    && peaked("beta")
            },
        )
        .expect("bytes and throughput follow the traffic");
    for name in ["alpha", "beta"] {
        let state = row(&after, name)
            .and_then(|r| r["state"].as_str())
            .unwrap_or_default();
        assert!(
            state.starts_with("closed"),
            "{name} is {state:?} after traffic"
        );
        // Under sockmap the verdict's mean skb each way: known down after
        // 4 MiB downloads; up, a dash (the relay carried the 16-byte
        // requests before the hand-over). Nothing under splice.
        let per_skb = row(&after, name)
            .and_then(|r| r["per_skb"].as_str())
            .unwrap_or_default();
        if after["engine"] == "sockmap" {
            let (up, down) = per_skb
                .strip_prefix("per skb ↑ ")
                .and_then(|rest| rest.split_once(" · ↓ "))
                .unwrap_or_else(|| panic!("{name}: per skb shows {per_skb:?}"));
            assert!(
                (up == "–" || shown_bytes(up).is_some())
                    && shown_bytes(down).is_some_and(|b| b > 0.0),
                "{name}: per skb shows {per_skb:?}"
            );
        } else {
            assert_eq!(per_skb, "", "{name} under {}", after["engine"]);
        }
    }
    println!(
        "dashboard: alpha {alpha0} -> {:?}, beta {beta0} -> {:?} bytes down",
        row(&after, "alpha").map(|r| &r["bytes_down"]),
        row(&after, "beta").map(|r| &r["bytes_down"]),
    );

    // Let the history show the burst and its end before the picture.
    thread::sleep(Duration::from_secs(3));
    let png = artefact("dashboard.png").expect("artefact path");
    browser.screenshot(&png).expect("screenshot");
    println!("dashboard screenshot: {}", png.display());
    browser.color_scheme("dark").expect("emulate dark mode");
    thread::sleep(Duration::from_millis(300));
    let dark = artefact("dashboard-dark.png").expect("artefact path");
    browser.screenshot(&dark).expect("screenshot");
    println!("dashboard screenshot, dark: {}", dark.display());

    let console = browser.console().expect("browser console");
    let errors: Vec<_> = console
        .iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(
        errors.is_empty(),
        "console errors: {errors:#?}\nall: {console:#?}"
    );

    // The daemon goes away: the banner must say so; a new one on the same
    // address: the banner must go.
    drop(daemon);
    browser
        .wait_for(Duration::from_secs(8), "the disconnected banner", |page| {
            page["banner"] == true && page["live"] == "disconnected"
        })
        .expect("banner while the daemon is down");
    let down_png = artefact("dashboard-disconnected.png").expect("artefact path");
    browser.screenshot(&down_png).expect("screenshot");
    let restarted = Daemon::start(&ns, &instance, &config).expect("daemon again");
    browser
        .wait_for(
            Duration::from_secs(10),
            "recovery after the restart",
            |page| {
                page["banner"] == false
                    && row(page, "alpha").is_some()
                    && row_bytes(page, "alpha", "bytes_down").is_some_and(|b| b < pushed / 4.0)
            },
        )
        .expect("the page recovers with the new daemon's counters");

    // A name that is markup shows as text: no element is made of it.
    let body =
        serde_json::to_string(&json!({ "address": backends[2].to_string(), "name": HOSTILE_NAME }))
            .expect("JSON");
    let (status, _, answer) = http_exchange(
        &ns,
        metrics,
        format!(
            "POST /api/v1/backends HTTP/1.0\r\nHost: {metrics}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!((200..300).contains(&status), "register: {status} {answer}");
    let shown = browser
        .wait_for(Duration::from_secs(8), "the run-time backend", |page| {
            row(page, HOSTILE_NAME).is_some()
        })
        .expect("the registered backend appears");
    assert_eq!(
        shown["markup"], 0,
        "a backend name became markup: {shown:#}"
    );

    // The only errors since: the failed polls while nothing listened.
    let console = browser.console().expect("browser console");
    for (level, message) in &console {
        assert!(
            level != "SEVERE" || message.contains("/api/v1/status"),
            "unexpected console error while disconnected: {message}"
        );
    }

    // The console check above can fail: a load from another origin is
    // refused by the page's CSP and reported as an error.
    browser
        .execute(
            "const i = document.createElement('img'); \
             i.src = 'http://192.0.2.1/probe.png'; document.body.append(i); return true;",
        )
        .expect("inject an image");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = Vec::new();
    while refused.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        refused = browser
            .console()
            .expect("browser console")
            .into_iter()
            .filter(|(level, message)| level == "SEVERE" && message.contains("192.0.2.1"))
            .collect();
    }
    assert!(
        refused
            .iter()
            .any(|(_, m)| m.contains("Content Security Policy")),
        "an external image load was not reported as a CSP error: {refused:?}"
    );
    drop(restarted);
    drop(socks);
}

/// The badge that tells an operator to move a backend to splice: shown, with
/// its explanation, on the row of a backend whose downloads reached the
/// verdict in 1 KiB skbs, and not on its neighbour's, which wrote 64 KiB at
/// a time. (The rule itself is tested where the daemon computes it; this is
/// what the page makes of the daemon's `splice_advised`.)
#[test]
fn the_dashboard_badges_the_backend_advised_splice_and_only_it() {
    require_root("network namespaces and BPF");
    require_command("chromedriver", "chromium-driver");
    require_command("chromium", "chromium");
    let ns = NetNs::new().expect("netns");
    let small = ChunkedBackend::start(&ns, 1024);
    let large = ChunkedBackend::start(&ns, 64 << 10);
    let instance = unique("badge");
    let metrics = SocketAddr::from((LO, free_port(&ns, LO)));
    let config = format!(
        "{}metrics: {{ listen: \"{metrics}\" }}\n",
        two_backend_config(
            &instance,
            [("small", small.addr(), ""), ("large", large.addr(), "")],
            1,
            "engine: sockmap, connect_timeout: 2s, handshake_timeout: 5s",
        )
    );
    let daemon = Daemon::start(&ns, &instance, &config).expect("daemon");
    // Round robin: one download from each.
    for _ in 0..2 {
        chunked_download(&ns, daemon.listener("socks"));
    }

    let browser = Browser::start(&ns).expect("chromedriver and chromium");
    browser
        .open(&format!("http://{metrics}/"))
        .expect("open the dashboard");
    let page = browser
        .wait_for(
            Duration::from_secs(15),
            "both rows with their badges",
            |page| {
                row(page, "small")
                    .is_some_and(|r| r["badges"].as_array().is_some_and(|b| b.len() > 1))
                    && row(page, "large").is_some()
            },
        )
        .expect("the advised backend's badge");
    let badges = |name| {
        row(&page, name)
            .map(|r| r["badges"].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        badges("small"),
        json!(["closed", "splice advised"]),
        "{page:#}"
    );
    assert_eq!(badges("large"), json!(["closed"]), "{page:#}");
    let advice = row(&page, "small")
        .and_then(|r| r["advice"].as_str())
        .unwrap_or_default();
    assert!(advice.contains("engine: splice"), "badge title {advice:?}");
    let console = browser.console().expect("browser console");
    assert!(
        console.iter().all(|(level, _)| level != "SEVERE"),
        "console errors: {console:#?}"
    );
    drop(browser);
    drop(daemon);
    drop((small, large));
}
