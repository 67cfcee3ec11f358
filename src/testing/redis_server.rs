//! [`RedisServer`]: a throwaway `redis-server` on a free loopback port, for tests and examples.
//! Plain `std` (a child process and a socket), so it runs anywhere, in a runtime or not.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get `redis-server` where it is missing (Debian, Ubuntu).
pub const INSTALL_HINT: &str = "install it with `apt-get install redis-server` (Debian, Ubuntu)";

/// A `redis-server` this process started on 127.0.0.1, without persistence (`--save ""
/// --appendonly no`), stopped when dropped.
///
/// ```no_run
/// use lengow_auth::testing::RedisServer;
///
/// let Some(redis) = RedisServer::start()? else {
///     eprintln!("redis-server is not installed: skipping");
///     return Ok(());
/// };
/// println!("redis at {}", redis.url());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers `PING`.
    ///
    /// `Ok(None)` if there is no `redis-server` on the `PATH` ([`INSTALL_HINT`] says how to
    /// get one); an error if it is there but does not start.
    pub fn start() -> io::Result<Option<Self>> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut server = Self { child: None, port };
        match server.spawn() {
            Ok(()) => Ok(Some(server)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A server for a test: `None`, with a notice on stderr, where `redis-server` is missing,
    /// so that the test can skip; under `CI=true` a missing server is a panic instead, and so
    /// is a server that does not start.
    pub fn start_or_skip() -> Option<Self> {
        match Self::start() {
            Ok(Some(server)) => Some(server),
            Ok(None) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("redis-server is missing and CI=true: {INSTALL_HINT}")
            }
            Ok(None) => {
                eprintln!("skipped: redis-server is not installed; {INSTALL_HINT}");
                None
            }
            Err(e) => panic!("redis-server did not start: {e}"),
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server without closing anything (SIGSTOP): connections stay open and calls
    /// go unanswered, as with a Redis that hangs. [`resume`](Self::resume) undoes it.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a [paused](Self::pause) server run again (SIGCONT).
    pub fn resume(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let Some(child) = &self.child else {
            return Err(io::Error::other("redis-server is not running"));
        };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} failed: {status}")))
        }
    }

    /// Starts it again, empty, on the same port, and waits until it answers.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Sends one inline command and returns the raw reply (for `FLUSHALL`, `DBSIZE`, …).
    pub fn command(&self, command: &str) -> io::Result<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut reply = [0u8; 512];
        let n = stream.read(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply[..n]).trim_end().to_owned())
    }

    fn spawn(&mut self) -> io::Result<()> {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.command("PING") {
                Ok(reply) if reply == "+PONG" => return Ok(()),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    return Err(io::Error::other(format!(
                        "redis-server did not answer on port {port} within 10 s"
                    )));
                }
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}
