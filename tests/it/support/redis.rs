//! Redis for the shared-state tests: a real `redis-server` on a loopback port with no
//! persistence, that a test can stop and restart (empty) on the same port, and a Redis Cluster
//! of three masters. Readiness is polled with a raw `PING` (or `CLUSTER INFO`), never slept.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::wait_for;

const REDIS_SERVER: &str = "redis-server";
const REDIS_CLI: &str = "redis-cli";

/// A loopback port nothing listens on now: the OS hands one out, the listener is dropped, and
/// a connection to it is refused.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        drop(l);
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return port;
        }
    }
}

/// One command in RESP to `addr`; the answer as text (a simple or bulk string, an integer,
/// an array's items one per line), or the error line.
pub fn command(addr: &str, args: &[&str]) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    read_reply(&mut BufReader::new(s))
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(rest.to_owned()),
        "$" => {
            let n: i64 = rest
                .parse()
                .map_err(|_| format!("bad bulk length {rest:?}"))?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest
                .parse()
                .map_err(|_| format!("bad array length {rest:?}"))?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Ok(items.join("\n"))
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

/// Whether `PING` on `addr` answers `+PONG`.
fn pongs(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line == "+PONG\r\n"
}

/// One `redis-server` process.
pub struct Redis {
    port: u16,
    /// Extra arguments (cluster mode), kept for restarts.
    extra: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    /// A standalone Redis on a free loopback port, nothing saved to disk.
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// Starts one server; in cluster mode the cluster bus gets a port of its own (not
    /// port + 10000, which may be taken or past 65535).
    fn start_with(cluster: bool) -> Redis {
        // The ports were free a moment ago; if something took one since, redis-server exits
        // at once and other ports are tried.
        for _ in 0..5 {
            let port = free_port();
            let extra: Vec<String> = if cluster {
                let bus = std::iter::repeat_with(free_port)
                    .find(|b| *b != port)
                    .expect("a bus port");
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-port",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([bus.to_string()])
                .collect()
            } else {
                Vec::new()
            };
            let mut r = Redis {
                port,
                extra,
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts the process on `self.port` and waits for `PING`; false if it exited (the port
    /// was taken).
    fn spawn(&mut self) -> bool {
        assert!(self.child.is_none(), "redis-server is already running");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let addr = self.addr();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                eprintln!(
                    "redis-server on port {} exited with {status}: {}",
                    self.port,
                    self.log()
                );
                self.child = None;
                return false;
            }
            if pongs(&addr) {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {addr} never answered PING: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// One command on this server.
    pub fn command(&self, args: &[&str]) -> Result<String, String> {
        command(&self.addr(), args)
    }

    /// Stops the server: SIGTERM, then SIGKILL if it is still there after 5 s; waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server if it runs and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        // Nothing is saved, but make sure no dump is loaded.
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        assert!(
            self.spawn(),
            "redis-server could not start again on port {}",
            self.port
        );
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster: three masters, no replicas, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_with(true)).collect();
        let out = Command::new(REDIS_CLI)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(Redis::addr))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for n in &nodes {
            wait_for(
                "cluster_state:ok on every node",
                Duration::from_secs(20),
                || {
                    n.command(&["CLUSTER", "INFO"])
                        .ok()
                        .filter(|info| info.contains("cluster_state:ok"))
                },
            );
        }
        RedisCluster { nodes }
    }

    /// The nodes' URLs: the first for `[state] url`, the others for `cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}
