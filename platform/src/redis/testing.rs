//! A real `redis-server` for tests: started on a free loopback port in a
//! temporary directory, killed by its PID (and the directory removed) when
//! dropped.
//!
//! ```text
//!   RedisServer::start(persistence)      redis-server --port P --bind 127.0.0.1
//!     │                                    --dir /tmp/sluice-redis-<uuid>
//!     ├─ url()      redis://127.0.0.1:P/0   --appendonly yes|no --save ""
//!     ├─ kill()     SIGKILL, as a crash
//!     ├─ freeze()   SIGSTOP, a hung server (thaw(): SIGCONT)
//!     ├─ restart()  same port, same dir (AOF replayed when persistence)
//!     └─ drop       SIGKILL + rm -r dir
//!
//!   RedisServer::start_from_aof(backup)  … with a copy of backup/appendonlydir
//!                                          in its own dir, AOF on: a restore
//!
//!   RedisServer::start_tls()             … plus --tls-port Q with a server
//!     ├─ tls_url()  rediss://127.0.0.1:Q/0   certificate for 127.0.0.1 signed
//!     └─ ca_pem()   the CA certificate       by a throwaway CA (openssl CLI)
//! ```
//!
//! Used by this crate's tests and by other crates' tests (it is public for
//! that, and compiled in always so no feature has to be switched on). When
//! `redis-server` is not installed, [`RedisServer::start`] panics saying how
//! to install it: a test that needs Redis must fail, never pass silently.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary, looked up on `PATH`.
const BINARY: &str = "redis-server";

/// How long a started server may take to answer `PING`.
const READY_PATIENCE: Duration = Duration::from_secs(10);

/// A `redis-server` process owned by a test.
///
/// # Guarantees
/// The process is killed (SIGKILL, by PID) and its directory removed when
/// this value is dropped, also when the test panics.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistence: bool,
    password: Option<String>,
    /// A config file given to [`Self::start_with_config`]: read first, the
    /// test's own options (port, bind, dir, logfile) override it.
    config: Option<String>,
    /// The user [`Self::answers_ping`] authenticates as (`None`: `default`).
    user: Option<String>,
    /// The TLS port, when started with [`Self::start_tls`].
    tls_port: Option<u16>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server; `persistence` turns on the append-only file
    /// (`appendfsync everysec`), so [`Self::restart`] keeps the data.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not come up; the message says
    /// what to do.
    pub fn start(persistence: bool) -> Self {
        Self::start_with(persistence, None)
    }

    /// Like [`Self::start`], with `requirepass` set when `password` is given
    /// ([`Self::url`] then carries it).
    ///
    /// # Panics
    /// As [`Self::start`].
    pub fn start_with(persistence: bool, password: Option<&str>) -> Self {
        match Self::try_start(persistence, password) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{BINARY}` is not installed or not on PATH; these tests need a real Redis \
                 (>= 7.0): install it with `apt-get install -y redis-server` (the project's \
                 test script does this)"
            ),
            Err(e) => panic!("could not start {BINARY}: {e}"),
        }
    }

    /// Starts a server, reporting failures instead of panicking.
    ///
    /// # Errors
    /// `NotFound` when `redis-server` is not installed; other I/O errors when
    /// it exits or does not answer within 10 s.
    pub fn try_start(persistence: bool, password: Option<&str>) -> std::io::Result<Self> {
        Self::unstarted(persistence, password)?.start_on_a_free_port()
    }

    /// A server with the append-only file on, started from `backup`: a
    /// directory holding an `appendonlydir` taken from another server (as
    /// `tar -C <dir> -cf - appendonlydir` takes it from a live one), copied
    /// into this server's own directory first.
    ///
    /// # Panics
    /// As [`Self::start`], or when the backup cannot be copied.
    pub fn start_from_aof(backup: &Path) -> Self {
        let server = Self::unstarted(true, None).expect("a directory for redis-server");
        let from = backup.join("appendonlydir");
        let to = server.dir.join("appendonlydir");
        std::fs::create_dir_all(&to).expect("create appendonlydir");
        for f in std::fs::read_dir(&from)
            .unwrap_or_else(|e| panic!("read the backup {}: {e}", from.display()))
        {
            let f = f.expect("a backup file");
            std::fs::copy(f.path(), to.join(f.file_name())).expect("copy a backup file");
        }
        server
            .start_on_a_free_port()
            .unwrap_or_else(|e| panic!("could not start {BINARY} from the backup: {e}"))
    }

    fn unstarted(persistence: bool, password: Option<&str>) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sluice-redis-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            port: 0,
            dir,
            persistence,
            password: password.map(str::to_string),
            config: None,
            user: None,
            tls_port: None,
            child: None,
        })
    }

    fn start_on_a_free_port(self) -> std::io::Result<Self> {
        let mut server = self;
        // A port found free can be taken before redis-server binds it; try a
        // few.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
    }

    /// A server started from `config` (a whole `redis.conf`, such as the
    /// operator renders for managed Redis); this harness's port, bind
    /// address, directory and log file replace the file's. `user` and
    /// `password` are the ACL user its readiness check authenticates as;
    /// [`Self::url`] carries them.
    ///
    /// # Panics
    /// As [`Self::start`], and when the file makes the server refuse to
    /// start (its log tail is in the message).
    pub fn start_with_config(config: &str, user: &str, password: &str) -> Self {
        Self::start_with_config_files(config, user, password, &[])
    }

    /// As [`Self::start_with_config`], with `files` (name, content) the file
    /// refers to: written to this server's directory, and every path in
    /// the file's `tls-cert-file`, `tls-key-file` and `tls-ca-cert-file`
    /// lines pointed there by its last component. A `tls-port` line makes
    /// the server speak TLS on a port of this harness's
    /// ([`Self::tls_address`]); the plain port stays, for its probes.
    ///
    /// # Panics
    /// As [`Self::start_with_config`], and when a file cannot be written.
    pub fn start_with_config_files(
        config: &str,
        user: &str,
        password: &str,
        files: &[(&str, &[u8])],
    ) -> Self {
        let mut s = Self::start(false);
        s.kill();
        for (name, content) in files {
            std::fs::write(s.dir.join(name), content).expect("write a file of the config");
        }
        s.config = Some(config.to_string());
        s.user = Some(user.to_string());
        s.password = Some(password.to_string());
        let tls = config.lines().any(|l| l.starts_with("tls-port "));
        let mut last = None;
        for _ in 0..5 {
            if tls {
                s.tls_port = Some(free_port().expect("a free port"));
            }
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = Some(e),
            }
        }
        panic!("could not start {BINARY} from the given config: {last:?}");
    }

    /// `127.0.0.1:<tls port>` of a server that speaks TLS.
    ///
    /// # Panics
    /// When the server speaks no TLS.
    pub fn tls_address(&self) -> String {
        let port = self.tls_port.expect("a server that speaks TLS");
        format!("127.0.0.1:{port}")
    }

    /// A server that also speaks TLS on a second port, with a certificate
    /// for `127.0.0.1` signed by a CA made for it ([`Self::ca_pem`]); the
    /// plain port stays for probes. Clients need not present a certificate.
    ///
    /// # Panics
    /// When `redis-server` (built with TLS) or `openssl` is missing, or the
    /// server does not come up.
    pub fn start_tls() -> Self {
        let mut s = Self::start(false);
        s.kill();
        if let Err(e) = make_certificates(&s.dir) {
            panic!(
                "could not make test certificates with `openssl` (install it with \
                 `apt-get install -y openssl`): {e}"
            );
        }
        let mut last = None;
        for _ in 0..5 {
            s.tls_port = Some(free_port().expect("a free port"));
            match s.spawn() {
                Ok(()) => return s,
                Err(e) => last = Some(e),
            }
        }
        panic!("could not start {BINARY} with TLS: {last:?}")
    }

    /// `rediss://127.0.0.1:<tls port>/0`.
    ///
    /// # Panics
    /// When the server was not started with [`Self::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("rediss://127.0.0.1:{port}/0")
    }

    /// The PEM certificate of the CA that signed the server's certificate.
    ///
    /// # Panics
    /// When the server was not started with [`Self::start_tls`].
    pub fn ca_pem(&self) -> Vec<u8> {
        assert!(self.tls_port.is_some(), "started with start_tls");
        std::fs::read(self.ca_path()).expect("read the test CA")
    }

    /// Where [`Self::ca_pem`] is stored.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The port the server listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[[user]:password@]127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// The URL of database `db`. A server started from a config file is
    /// reached as its user, with no database (an ACL user may not be
    /// allowed `SELECT`).
    pub fn url_db(&self, db: u8) -> String {
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            return format!("redis://{u}:{p}@127.0.0.1:{}", self.port);
        }
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    /// PID of the running process, `None` after [`Self::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's working directory (AOF files, `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the process with SIGKILL (a crash: no final save) and reaps it.
    /// Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGSTOP: its connections stay open but nothing
    /// is answered, as with a hung server or a silent network. Undone by
    /// [`Self::thaw`]; a frozen server is still killed on drop.
    ///
    /// # Panics
    /// When the server is not running or `kill` (procps) cannot be run.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resumes a server stopped by [`Self::freeze`].
    ///
    /// # Panics
    /// As [`Self::freeze`].
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the redis-server is running");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("could not run `kill -{sig}` (procps): {e}"));
        assert!(status.success(), "`kill -{sig} {pid}` failed: {status}");
    }

    /// Makes everything written so far durable in the AOF: with
    /// `appendfsync everysec` Redis may postpone writing its AOF buffer
    /// while a background fsync is slow (a busy disk), and a crash then
    /// loses up to two seconds — real Redis behaviour, which a test of "the
    /// AOF keeps what was written" must rule out first. Switches to
    /// `always` for one write (written and fsynced before the reply, never
    /// postponed), then back.
    ///
    /// # Panics
    /// When the server does not answer or refuses.
    pub fn sync_aof(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {BINARY} on port {}: {e}", self.port));
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut req = self.auth_line();
        req.push_str(
            "CONFIG SET appendfsync always\r\nSET sluice-test:aof-sync 1\r\nCONFIG SET appendfsync everysec\r\n",
        );
        s.write_all(req.as_bytes()).expect("send to redis-server");
        let want = req.lines().count();
        let mut got = String::new();
        let mut buf = [0u8; 256];
        while got.matches("\r\n").count() < want {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        assert!(
            got.lines().count() == want && got.lines().all(|l| l.starts_with('+')),
            "{BINARY} did not sync its AOF: {got:?}"
        );
    }

    /// Kills the server if running and starts it again on the same port and
    /// directory; with persistence the data is reloaded from the AOF.
    ///
    /// # Panics
    /// When it does not come back within 10 s.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("could not restart {BINARY} on port {}: {e}", self.port);
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(BINARY);
        if let Some(config) = &self.config {
            // Redis acts on `dir` as it reads it, before the command line
            // could override it: the harness's own settings replace the
            // file's lines.
            let ours = ["dir ", "port ", "bind ", "logfile ", "tls-port "];
            let files = ["tls-cert-file ", "tls-key-file ", "tls-ca-cert-file "];
            let kept: Vec<String> = config
                .lines()
                .filter(|l| !ours.iter().any(|o| l.starts_with(o)))
                .map(|l| match files.iter().find(|f| l.starts_with(**f)) {
                    Some(f) => {
                        let name = l.rsplit('/').next().unwrap_or_default();
                        format!("{f}{}", self.dir.join(name).display())
                    }
                    None => l.to_string(),
                })
                .collect();
            let path = self.dir.join("given.conf");
            std::fs::write(&path, kept.join("\n"))?;
            cmd.arg(path);
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log", "--save", ""])
            .args(["--appendonly", if self.persistence { "yes" } else { "no" }])
            .args(["--appendfsync", "everysec"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A config file Redis refuses is reported on stderr only.
            .stderr(match std::fs::File::create(self.dir.join("stderr.log")) {
                Ok(f) => Stdio::from(f),
                Err(_) => Stdio::null(),
            });
        if let (Some(p), None) = (&self.password, &self.config) {
            cmd.args(["--requirepass", p]);
        }
        if let (Some(port), Some(_)) = (self.tls_port, &self.config) {
            cmd.arg("--tls-port").arg(port.to_string());
        } else if let Some(port) = self.tls_port {
            cmd.arg("--tls-port")
                .arg(port.to_string())
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
                .current_dir(&self.dir);
        }
        let child = cmd.spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_PATIENCE;
        loop {
            if self.answers_ping() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .map(|c| c.try_wait())
                .transpose()?
                .flatten();
            if let Some(status) = exited {
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "{BINARY} exited ({status}) on port {}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(std::io::Error::other(format!(
                    "{BINARY} did not answer PING within {READY_PATIENCE:?} on port {}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The inline `AUTH` a raw client of this server sends first (empty
    /// without a password).
    fn auth_line(&self) -> String {
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => format!("AUTH {u} {p}\r\n"),
            (None, Some(p)) => format!("AUTH {p}\r\n"),
            _ => String::new(),
        }
    }

    /// Whether this harness's own process answers `PING` with `PONG` (not
    /// `LOADING`, and authenticated when it needs a password). Another
    /// server that took the port first (a test starting beside this one)
    /// answers as well, while this one fails to bind and exits: its
    /// `process_id` tells them apart where the user may run `INFO`.
    fn answers_ping(&self) -> bool {
        self.pong() && self.ours()
    }

    /// Whether the process answering on the port is this harness's child:
    /// `INFO server`'s `process_id`. A user refused `INFO` cannot tell, and
    /// is taken at its word.
    fn ours(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        let Some(mut s) = self.send_quickly("INFO server\r\n") else {
            return false;
        };
        let mut buf = [0u8; 1024];
        let mut got = String::new();
        loop {
            if let Some(line) = got.split("\r\n").find(|l| l.starts_with('-')) {
                // `NOPERM` and the like: nothing to compare.
                return !line.starts_with("-LOADING");
            }
            if let Some(rest) = got.split("process_id:").nth(1) {
                if let Some((id, _)) = rest.split_once("\r\n") {
                    return id.trim() == pid.to_string();
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    }

    /// A connection that sent `command` (after `AUTH` where needed), with
    /// short timeouts: `None` when nothing listens or the write failed.
    fn send_quickly(&self, command: &str) -> Option<TcpStream> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut req = self.auth_line();
        req.push_str(command);
        s.write_all(req.as_bytes()).ok()?;
        Some(s)
    }

    fn pong(&self) -> bool {
        let Some(mut s) = self.send_quickly("PING\r\n") else {
            return false;
        };
        let mut buf = [0u8; 256];
        let mut got = String::new();
        while !got.contains("PONG") && !got.contains('-') {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        got.contains("+PONG")
    }

    fn log_tail(&self) -> String {
        let mut log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// A throwaway CA (`ca.crt`) and a server certificate for 127.0.0.1 and
/// localhost signed by it (`server.crt`, `server.key`), in `dir`.
fn make_certificates(dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<&str>; 3] = [
        [
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat()
        .into_iter()
        .chain(["-days", "2", "-subj", "/CN=sluice test CA"])
        .collect(),
        [
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat()
        .into_iter()
        .chain(["-subj", "/CN=127.0.0.1"])
        .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "openssl {} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on right now.
/// A free port below Linux's ephemeral range (32768–60999 by default).
///
/// A killed server keeps its port number for `restart()`; if its port came
/// from the ephemeral range, any test binding `127.0.0.1:0` in the meantime
/// (HTTP servers, other Redis servers) could be handed it. Random ports in
/// 20000–31999 are never handed out by `bind(0)`, and two Redis servers
/// picking the same one at the same moment is unlikely (and retried).
fn free_port() -> std::io::Result<u16> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..64 {
        let port = rng.gen_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
