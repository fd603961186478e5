//! Gossip membership across real processes on loopback: three `astramq-node`
//! brokers and one `astramq-proxy`, each joining the others' gossip ports.
//!
//! What is checked (and the measured times printed; run with `--nocapture`):
//! - all four see each other within 2 s of the first spawn, and the proxy's
//!   backend set holds the three brokers at the MQTT ports they printed;
//! - after `kill -9` of a node every survivor reports it `failed`;
//! - the killed node restarted with the same id is reported `joined` again;
//! - after SIGTERM a node is reported `left` at once and exits 0; it is
//!   `reaped` after the tombstone timeout, and rejoins when restarted;
//! - with `--gossip-key`, only members holding the same key (base64 or hex
//!   spelling) get in, and a keyed proxy never sends a client to a keyless
//!   or wrong-key node that tries to join it.
//!
//! Observations come from each process's stderr, where the membership
//! library logs `membership event kind=<k> member=<id> role=<r>`; each line
//! is timestamped when read, so times are fault → line seen by the test.
//! The process guard is kept in this file (std only) because events must be
//! timestamped per line and both binaries are needed.

use astramq_tests::signal;
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

/// The target for the whole cluster to see itself after start.
const JOIN_BOUND: Duration = Duration::from_secs(2);
/// Failure detection is ~1 s with 3 survivors; generous for a loaded machine.
const FAILED_BOUND: Duration = Duration::from_secs(6);
/// A graceful leave is announced before the process exits: "at once".
const LEFT_BOUND: Duration = Duration::from_secs(2);
/// A restarted member is pulled in by its `--join` within ~100 ms.
const REJOIN_BOUND: Duration = Duration::from_secs(3);
/// Tombstone timeout (6 s) plus up to one reap interval (2 s) plus slack.
const REAPED_BOUND: Duration = Duration::from_secs(15);
/// How long a process may take to leave and exit after SIGTERM.
const EXIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn three_nodes_and_a_proxy_see_joins_failures_leaves_and_rejoins() {
    let gossip: Vec<SocketAddr> = (0..4).map(|_| free_gossip_addr()).collect();
    let ids = ["n1", "n2", "n3", "px"];
    let start = Instant::now();
    let mut procs: Vec<Proc> = ids
        .iter()
        .zip(&gossip)
        .map(|(&id, &addr)| spawn_member(id, addr, &gossip, &[]))
        .collect();

    // 1. Everyone sees everyone (including itself).
    for p in &procs {
        let t = ids
            .iter()
            .map(|&id| p.wait_event("joined", id, start, JOIN_BOUND))
            .max()
            .unwrap();
        eprintln!(
            "[membership] {} saw all 4 members {:?} after the first spawn",
            p.id, t
        );
    }
    let proxy = &procs[3];
    for node in &procs[..3] {
        let mqtt = node.mqtt_addr();
        proxy.wait_line(
            &format!("backend added node_id={} mqtt_addr={mqtt}", node.id),
            JOIN_BOUND,
        );
    }

    // 2. kill -9 of n3: every survivor reports it failed.
    let killed = procs[2].kill9();
    for p in [&procs[0], &procs[1], &procs[3]] {
        let t = p.wait_event("failed", "n3", killed, FAILED_BOUND);
        eprintln!(
            "[membership] {} reported n3 failed {t:?} after kill -9",
            p.id
        );
    }
    proxy_lost_backend(&procs[3], "n3");

    // 3. n3 restarted with the same id and gossip port rejoins.
    let restarted = Instant::now();
    procs[2] = spawn_member("n3", gossip[2], &gossip, &[]);
    for p in [&procs[0], &procs[1], &procs[3]] {
        let t = p.wait_event("joined", "n3", restarted, REJOIN_BOUND);
        eprintln!(
            "[membership] {} saw restarted n3 join {t:?} after its spawn",
            p.id
        );
    }
    for id in ids {
        procs[2].wait_event("joined", id, restarted, REJOIN_BOUND);
    }

    // 4. SIGTERM of n2: reported left at once; the process exits 0.
    let terminated = procs[1].sigterm();
    for p in [&procs[0], &procs[2], &procs[3]] {
        let t = p.wait_event("left", "n2", terminated, LEFT_BOUND);
        eprintln!("[membership] {} reported n2 left {t:?} after SIGTERM", p.id);
    }
    let status = procs[1].wait_exit(EXIT_BOUND);
    assert!(status.success(), "n2 exited with {status} after SIGTERM");
    eprintln!(
        "[membership] n2 exited ({status}) {:?} after SIGTERM",
        terminated.elapsed()
    );
    proxy_lost_backend(&procs[3], "n2");

    // 5. The left member is forgotten after the tombstone timeout, then a
    //    restart with the same id rejoins.
    for p in [&procs[0], &procs[2], &procs[3]] {
        let t = p.wait_event("reaped", "n2", terminated, REAPED_BOUND);
        eprintln!("[membership] {} reaped n2 {t:?} after SIGTERM", p.id);
    }
    let restarted = Instant::now();
    procs[1] = spawn_member("n2", gossip[1], &gossip, &[]);
    for p in [&procs[0], &procs[2], &procs[3]] {
        let t = p.wait_event("joined", "n2", restarted, REJOIN_BOUND);
        eprintln!(
            "[membership] {} saw restarted n2 join {t:?} after its spawn",
            p.id
        );
    }

    // Everyone leaves cleanly; nobody ever reported a member it should not.
    for p in &mut procs {
        p.sigterm();
    }
    for p in &mut procs {
        let status = p.wait_exit(EXIT_BOUND);
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            p.id
        );
    }
    for p in &procs {
        for event in p.events() {
            assert!(
                ids.contains(&event.member.as_str()),
                "{}: unexpected {event:?}",
                p.id
            );
            let role = if event.member == "px" {
                "proxy"
            } else {
                "broker"
            };
            assert_eq!(event.role, role, "{}: {event:?}", p.id);
        }
    }
}

#[test]
fn a_gossip_key_admits_only_members_with_the_same_key() {
    // 32 bytes 0..31: the same key spelled in base64 and in hex.
    let base64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
    let other = "HxAREhMUFRYXGBkaGxwdHh8AAQIDBAUGBwgJCgsMDQ4=";
    let seed = free_gossip_addr();
    let start = Instant::now();
    let a = spawn(Bin::Proxy, "ka", seed, &[], &[("--gossip-key", base64)]);
    let b = spawn(
        Bin::Proxy,
        "kb",
        free_gossip_addr(),
        &[seed],
        &[("--gossip-key", &hex)],
    );
    a.wait_event("joined", "kb", start, JOIN_BOUND);
    b.wait_event("joined", "ka", start, JOIN_BOUND);

    let keyless = spawn(Bin::Proxy, "kc", free_gossip_addr(), &[seed], &[]);
    let wrong = spawn(
        Bin::Proxy,
        "kd",
        free_gossip_addr(),
        &[seed],
        &[("--gossip-key", other)],
    );
    // Each outsider reports its refused join; by then the seed has seen it.
    keyless.wait_line("no gossip seed answered yet", JOIN_BOUND);
    wrong.wait_line("no gossip seed answered yet", JOIN_BOUND);
    thread::sleep(Duration::from_millis(500));
    for p in [&a, &b] {
        for outsider in ["kc", "kd"] {
            assert!(
                !p.events().iter().any(|e| e.member == outsider),
                "{} let {outsider} in:\n{}",
                p.id,
                p.log()
            );
        }
    }
    for outsider in [&keyless, &wrong] {
        assert!(
            !outsider
                .events()
                .iter()
                .any(|e| e.member == "ka" || e.member == "kb"),
            "{} got in:\n{}",
            outsider.id,
            outsider.log()
        );
    }
}

#[test]
fn a_keyed_proxy_never_routes_clients_to_a_keyless_or_wrong_key_node() {
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let other = "HxAREhMUFRYXGBkaGxwdHh8AAQIDBAUGBwgJCgsMDQ4=";
    let start = Instant::now();
    let proxy_gossip = free_gossip_addr();
    let proxy = spawn(
        Bin::Proxy,
        "kp",
        proxy_gossip,
        &[],
        &[("--gossip-key", key)],
    );
    let member = spawn(
        Bin::Node,
        "kn",
        free_gossip_addr(),
        &[proxy_gossip],
        &[("--gossip-key", key)],
    );
    // Two real brokers claiming to be nodes, without the key and with
    // another one, both pointed at the proxy.
    let keyless = spawn(Bin::Node, "kx", free_gossip_addr(), &[proxy_gossip], &[]);
    let wrong = spawn(
        Bin::Node,
        "kw",
        free_gossip_addr(),
        &[proxy_gossip],
        &[("--gossip-key", other)],
    );
    proxy.wait_event("joined", "kn", start, JOIN_BOUND);
    keyless.wait_line("no gossip seed answered yet", JOIN_BOUND);
    wrong.wait_line("no gossip seed answered yet", JOIN_BOUND);
    let proxy_addr = proxy.listen_addr("astramq-proxy listening on mqtt://");
    // Round-robin over whatever the proxy trusts: every client must land
    // on the keyed node.
    const CLIENTS: usize = 12;
    for i in 0..CLIENTS {
        assert_eq!(
            connack_via(proxy_addr, &format!("kclient-{i}")),
            0,
            "client {i} not accepted:\n{}",
            proxy.log()
        );
    }
    let routed: Vec<String> = proxy
        .log()
        .lines()
        .filter(|l| l.contains("client routed"))
        .map(str::to_owned)
        .collect();
    assert_eq!(routed.len(), CLIENTS, "{}", proxy.log());
    assert!(
        routed.iter().all(|l| l.contains("backend=kn ")),
        "a client went elsewhere: {routed:#?}"
    );
    // Nor did the proxy ever see the outsiders as members or backends.
    for outsider in ["kx", "kw"] {
        assert!(
            !proxy.events().iter().any(|e| e.member == outsider)
                && !proxy.log().contains(&format!("node_id={outsider} ")),
            "the proxy knows {outsider}:\n{}",
            proxy.log()
        );
    }
    drop((member, keyless, wrong));
}

/// The CONNACK return code a clean-session CONNECT as `client_id` gets
/// through `proxy` (blocking, bounded by read and write timeouts).
fn connack_via(proxy: SocketAddr, client_id: &str) -> u8 {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&proxy, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to the proxy: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let connect = astramq_tests::wire::Connect::new(client_id).encode();
    stream.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .unwrap_or_else(|e| panic!("no CONNACK for {client_id}: {e}"));
    assert_eq!(
        connack[..3],
        [0x20, 0x02, 0x00],
        "not a CONNACK: {connack:?}"
    );
    connack[3]
}

/// Starts member `id`: the proxy for `px`, a node otherwise; it joins every
/// gossip address but its own.
fn spawn_member(id: &str, addr: SocketAddr, all: &[SocketAddr], extra: &[(&str, &str)]) -> Proc {
    let seeds: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != addr).collect();
    let bin = if id == "px" { Bin::Proxy } else { Bin::Node };
    spawn(bin, id, addr, &seeds, extra)
}

/// Waits until the proxy has logged `backend removed` for `id`.
fn proxy_lost_backend(proxy: &Proc, id: &str) {
    proxy.wait_line(&format!("backend removed node_id={id} "), JOIN_BOUND);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bin {
    Node,
    Proxy,
}

/// One observed `membership event` line.
#[derive(Debug, Clone)]
struct Event {
    at: Instant,
    kind: String,
    member: String,
    role: String,
}

/// A running binary. Dropping it kills the process, and prints its output if
/// the test is failing.
struct Proc {
    id: String,
    child: Child,
    /// Every stdout/stderr line with the instant the test read it.
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

fn spawn(
    bin: Bin,
    id: &str,
    gossip: SocketAddr,
    join: &[SocketAddr],
    extra: &[(&str, &str)],
) -> Proc {
    let path = match bin {
        Bin::Node => binaries().join("astramq-node"),
        Bin::Proxy => binaries().join("astramq-proxy"),
    };
    let mut cmd = Command::new(&path);
    cmd.args(["--node-id", id, "--gossip-listen", &gossip.to_string()]);
    if !join.is_empty() {
        let join: Vec<String> = join.iter().map(|a| a.to_string()).collect();
        cmd.args(["--join", &join.join(",")]);
    }
    // Both serve MQTT: a free loopback port, never the default 1883.
    cmd.args(["--listen", "127.0.0.1:0"]);
    if matches!(bin, Bin::Node) {
        // Its clients connect without credentials.
        cmd.args(["--allow-anonymous", "true"]);
    }
    for (flag, value) in extra {
        cmd.args([flag, value]);
    }
    // Our flags only: no inherited ASTRAMQ_* settings, plain info-level logs.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ASTRAMQ_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", path.display()));
    let lines = Arc::new(Mutex::new(Vec::new()));
    drain(child.stdout.take().unwrap(), lines.clone());
    drain(child.stderr.take().unwrap(), lines.clone());
    Proc {
        id: id.to_owned(),
        child,
        lines,
    }
}

/// Reads lines until the pipe closes, stamping each on arrival.
fn drain(pipe: impl Read + Send + 'static, lines: Arc<Mutex<Vec<(Instant, String)>>>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            lines
                .lock()
                .unwrap()
                .push((Instant::now(), strip_ansi(&line)));
        }
    });
}

impl Proc {
    fn events(&self) -> Vec<Event> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, line)| parse_event(*at, line))
            .collect()
    }

    /// Waits for the first `kind` event about `member` seen at or after
    /// `since`; returns how long after `since` it was seen.
    fn wait_event(&self, kind: &str, member: &str, since: Instant, limit: Duration) -> Duration {
        let deadline = since + limit;
        loop {
            let found = self
                .events()
                .into_iter()
                .find(|e| e.at >= since && e.kind == kind && e.member == member);
            if let Some(e) = found {
                return e.at - since;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no `{kind}` event for {member} within {limit:?}; output:\n{}",
                    self.id,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for any output line containing `needle`.
    fn wait_line(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(needle))
        {
            if Instant::now() > deadline {
                panic!(
                    "{}: no line with {needle:?} within {limit:?}; output:\n{}",
                    self.id,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The MQTT address a node printed on stdout once it listened.
    fn mqtt_addr(&self) -> SocketAddr {
        self.listen_addr("astramq-node listening on mqtt://")
    }

    /// The address on the first output line containing `ready`, after it.
    fn listen_addr(&self, ready: &str) -> SocketAddr {
        self.wait_line(ready, JOIN_BOUND);
        let lines = self.lines.lock().unwrap();
        let line = lines
            .iter()
            .find_map(|(_, l)| l.split(ready).nth(1))
            .unwrap();
        line.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad ready line {line:?}: {e}", self.id))
    }

    fn kill9(&mut self) -> Instant {
        self.child.kill().expect("kill -9");
        let at = Instant::now();
        let _ = self.child.wait();
        at
    }

    fn sigterm(&mut self) -> Instant {
        if let Err(error) = signal::send(&self.child, libc::SIGTERM) {
            panic!("SIGTERM to {}: {error}", self.id);
        }
        Instant::now()
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} still running {limit:?} after SIGTERM; output:\n{}",
                    self.id,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        let lines = self.lines.lock().unwrap();
        let skip = lines.len().saturating_sub(200);
        lines[skip..]
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- {} output (last 200 lines) ----\n{}",
                self.id,
                self.log()
            );
        }
    }
}

/// Parses `... membership event kind=<k> member=<id> role=<r> ...`.
fn parse_event(at: Instant, line: &str) -> Option<Event> {
    let rest = line.split("membership event ").nth(1)?;
    let fields: HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    Some(Event {
        at,
        kind: fields.get("kind")?.to_string(),
        member: fields.get("member")?.to_string(),
        role: fields.get("role")?.to_string(),
    })
}

/// Removes terminal colour sequences, in case a binary colours its logs.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A loopback address free for both TCP and UDP (gossip uses one port for
/// both), released for the member to bind.
fn free_gossip_addr() -> SocketAddr {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let addr = tcp.local_addr().expect("local addr");
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// The directory holding both binaries, built once per test process with
/// `cargo build -q -p astramq-node -p astramq-proxy` (same profile as the
/// tests; `ASTRAMQ_SKIP_BUILD=1` skips the build).
fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<test exe>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile dir")
            .to_path_buf();
        if std::env::var("ASTRAMQ_SKIP_BUILD").as_deref() != Ok("1") {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-q", "-p", "astramq-node", "-p", "astramq-proxy"])
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("running cargo build");
            assert!(
                status.success(),
                "cargo build of the binaries failed: {status}"
            );
        }
        dir
    })
}
