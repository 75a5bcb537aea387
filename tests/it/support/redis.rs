//! A real `redis-server` on a free port for the replica tests (never a mock of Redis), which the tests
//! may kill, stall (SIGSTOP) and restart. Without `redis-server` on the machine a test skips with a
//! line saying so, unless `CI=true`, where a missing Redis is a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one, or returns `None` after printing why the calling test is skipped.
    pub fn start(test: &str) -> Option<RedisServer> {
        let present = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed, and CI=true needs it (.ci/run installs it)"
            );
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // A port another process takes between our probe and redis's bind makes it exit; try again.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts the process on `self.port` and waits until it answers PING; false if it exited.
    fn spawn(&mut self) -> bool {
        self.child = Some(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                break;
            }
            if self
                .command(&["PING"])
                .is_some_and(|r| r.starts_with("+PONG"))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one command (inline RESP) and returns the raw reply, or `None` when Redis does not
    /// answer within a second.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Its working directory (`dump.rdb` after a `SAVE`; loaded again by `restart`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new process on the same port (after `kill`): empty, unless a `SAVE` left a `dump.rdb`.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a Redis that accepts connections but never answers.
    pub fn stall(&self, stalled: bool) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("redis running");
        let signal = if stalled {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
