//! Real database servers for the integration tests: PostgreSQL and MariaDB, started by the
//! test on a loop-mounted ext4 image it created, listening only on a Unix socket in a temp
//! dir on the root filesystem (which tests never freeze), stopped on drop.
//!
//! PostgreSQL refuses to run as root: its processes run as the `postgres` user (uid/gid
//! set on exec). MariaDB runs with `--user=root`. Tests skip, saying why, when not root or
//! when the server binaries are missing.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hv_vss_testutil::{FsKind, LoopFs};

pub const WAIT: Duration = Duration::from_secs(20);
/// Image size for a data directory (sparse).
pub const IMAGE_MIB: u64 = 256;

/// `true` (after printing why) when the database tests cannot run here.
pub fn skip(what: &str, db: Db) -> bool {
    if hv_vss_testutil::skip_unless_root(what) {
        return true;
    }
    let missing = match db {
        Db::Postgres => pg_bin_dir()
            .is_none()
            .then_some("PostgreSQL (/usr/lib/postgresql/*/bin/postgres)"),
        Db::Mariadb => (which("mariadbd").is_none() || which("mariadb-install-db").is_none())
            .then_some("MariaDB (mariadbd, mariadb-install-db)"),
    };
    if let Some(m) = missing {
        eprintln!(
            "skipped {what}: {m} is not installed (apt-get install postgresql mariadb-server)"
        );
        return true;
    }
    false
}

#[derive(Debug, Clone, Copy)]
pub enum Db {
    Postgres,
    Mariadb,
}

fn which(name: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.exists())
}

/// The newest /usr/lib/postgresql/N/bin holding `postgres`.
pub fn pg_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn user_ids(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == name {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("no user {name}");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loop-mounted ext4 for a data directory, its parent made traversable for the
/// database user.
pub fn data_fs() -> LoopFs {
    let fs = LoopFs::create(FsKind::Ext4, IMAGE_MIB, None).unwrap();
    let parent = fs.mount_point().parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    fs
}

/// A temp dir on the root filesystem (sockets, logs), traversable by every user.
pub fn run_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < end, "{what} not ready within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL server on `data` (owned by `postgres`), socket in its own temp dir.
pub struct Pg {
    pub data: PathBuf,
    pub run: tempfile::TempDir,
    child: Option<Child>,
}

impl Pg {
    /// `initdb` a new cluster in `dir/pgdata` and start it.
    pub fn init_and_start(dir: &Path) -> Self {
        let (uid, gid) = user_ids("postgres");
        let data = dir.join("pgdata");
        std::fs::create_dir(&data).unwrap();
        chown(&data, uid, gid);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        run_ok(
            Command::new(pg_bin_dir().unwrap().join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data)
                .uid(uid)
                .gid(gid)
                .current_dir("/"),
        );
        Self::start(&data)
    }

    /// Starts the server on an existing data directory (crash recovery if it was not shut
    /// down cleanly).
    pub fn start(data: &Path) -> Self {
        let (uid, gid) = user_ids("postgres");
        let run = run_dir("hv-vss-pg-run-");
        chown(run.path(), uid, gid);
        let log = std::fs::File::create(run.path().join("postgres.log")).unwrap();
        chown(&run.path().join("postgres.log"), uid, gid);
        let child = Command::new(pg_bin_dir().unwrap().join("postgres"))
            .arg("-D")
            .arg(data)
            .arg("-k")
            .arg(run.path())
            .args(["-c", "listen_addresses=", "-c", "fsync=on", "-p", "5432"])
            .uid(uid)
            .gid(gid)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Self {
            data: data.to_path_buf(),
            run,
            child: Some(child),
        };
        wait_until("postgres", || pg.try_client().is_ok());
        pg
    }

    /// libpq connection string for the `postgres` superuser.
    pub fn connect_string(&self) -> String {
        format!(
            "host={} port=5432 user=postgres dbname=postgres",
            self.run.path().display()
        )
    }

    pub fn try_client(&self) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.connect_string(), postgres::NoTls)
    }

    pub fn client(&self) -> postgres::Client {
        self.try_client().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.path().join("postgres.log")).unwrap_or_default()
    }

    /// Fast shutdown (SIGINT) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), rustix::process::Signal::INT);
            let _ = child.wait();
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: the test is over, and the filesystem may be going away.
            signal(child.id(), rustix::process::Signal::QUIT);
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// A MariaDB server on `data`, socket in its own temp dir, no networking.
pub struct Maria {
    pub data: PathBuf,
    pub run: tempfile::TempDir,
    child: Option<Child>,
}

const MARIA_OPTS: [&str; 3] = [
    "--innodb-log-file-size=16M",
    "--innodb-buffer-pool-size=32M",
    "--skip-log-bin",
];

impl Maria {
    /// `mariadb-install-db` into `dir/mysql` and start it.
    pub fn init_and_start(dir: &Path) -> Self {
        let data = dir.join("mysql");
        std::fs::create_dir(&data).unwrap();
        // Each server its own tmpdir: mariadbd removes `#sql*` files in its tmpdir at
        // start, which would remove another instance's temporary tables in /tmp.
        let tmp = run_dir("hv-vss-maria-tmp-");
        run_ok(
            Command::new("mariadb-install-db")
                .args([
                    "--no-defaults",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ])
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.path().display()))
                .args(MARIA_OPTS),
        );
        Self::start(&data)
    }

    /// Starts the server on an existing data directory.
    pub fn start(data: &Path) -> Self {
        let run = run_dir("hv-vss-maria-run-");
        let child = Command::new(which("mariadbd").unwrap())
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!(
                "--socket={}",
                run.path().join("mysqld.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                run.path().join("mysqld.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                run.path().join("error.log").display()
            ))
            .arg("--skip-networking")
            .args(MARIA_OPTS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let maria = Self {
            data: data.to_path_buf(),
            run,
            child: Some(child),
        };
        wait_until("mariadbd", || maria.try_conn().is_ok());
        maria
    }

    pub fn url(&self) -> String {
        format!(
            "mysql://root@localhost/?socket={}",
            self.run.path().join("mysqld.sock").display()
        )
    }

    pub fn try_conn(&self) -> Result<mysql::Conn, mysql::Error> {
        mysql::Conn::new(mysql::Opts::from_url(&self.url()).unwrap())
    }

    pub fn conn(&self) -> mysql::Conn {
        self.try_conn().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.path().join("error.log")).unwrap_or_default()
    }

    /// Clean shutdown (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), rustix::process::Signal::TERM);
            let _ = child.wait();
        }
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process killed on drop (the integration binary under test).
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.stdin(Stdio::null()).spawn().unwrap())
    }
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A thread that commits numbered rows (1, 2, 3, ...) one per transaction, and records the
/// highest number whose commit returned. `insert` runs one committed insert of `n`.
pub struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(mut insert: impl FnMut(u64) -> Result<(), String> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), committed.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 1;
            while !s.load(Ordering::SeqCst) {
                match insert(n) {
                    Ok(()) => {
                        c.store(n, Ordering::SeqCst);
                        n += 1;
                    }
                    Err(e) => {
                        eprintln!("writer: insert {n}: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        Self {
            stop,
            committed,
            thread: Some(thread),
        }
    }

    /// The highest row number whose commit has returned.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` rows are committed.
    pub fn wait_for(&self, n: u64) {
        wait_until("writer", || self.committed() >= n);
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.committed()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Not joined: the writer may be blocked on a frozen filesystem; the test's guards
        // thaw it.
    }
}

// ---- the real hv-vssd, for backups end to end --------------------------------------------

/// `hv-vssd` built next to this package's binaries (`cargo test --workspace` and
/// `cargo build -p hv-vssd` put it there; `cargo test -p hv-vss-integrations` alone does
/// not build it).
pub fn hv_vssd() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_BIN_EXE_hv-vss-postgres")).with_file_name("hv-vssd");
    path.exists().then_some(path)
}

/// `true` (after printing why) when a backup test through hv-vssd cannot run here.
pub fn skip_backup(what: &str, db: Db) -> bool {
    if skip(what, db) {
        return true;
    }
    if hv_vssd().is_none() {
        eprintln!(
            "skipped {what}: hv-vssd is not built next to the integrations \
             (cargo build -p hv-vssd, or cargo test --workspace)"
        );
        return true;
    }
    for tool in ["fsck.ext4", "losetup", "cp"] {
        if which(tool).is_none() {
            eprintln!("skipped {what}: {tool} is not installed");
            return true;
        }
    }
    false
}

/// hv-vssd in drop-in mode against the kernel emulator, freezing only `mount`.
pub struct Vssd {
    // Dropped first: the daemon stops before its device goes away.
    pub daemon: hv_vss_testutil::vssd::Vssd,
    pub emu: hv_vss_sim::kernel::KernelEmulator,
    _state: tempfile::TempDir,
}

impl Vssd {
    pub fn start(mount: &Path) -> Self {
        let emu = hv_vss_sim::kernel::KernelEmulator::start(
            hv_vss_sim::kernel::EmulatorConfig::default(),
        )
        .unwrap();
        let state = hv_vss_testutil::tmpfs_state_dir().unwrap();
        let daemon = hv_vss_testutil::vssd::Vssd::start(
            &hv_vssd().unwrap(),
            emu.socket_path(),
            state.path(),
            &[mount],
        );
        assert!(emu.wait_ready(WAIT), "hv-vssd not ready:\n{}", daemon.log());
        Self {
            daemon,
            emu,
            _state: state,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.daemon.socket()
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn request(&self, op: hv_vss_protocol::VssOperation) -> hv_vss_sim::kernel::HostOutcome {
        self.emu.host_request(op)
    }

    pub fn verdicts(&self, n: usize) -> Vec<String> {
        self.daemon.verdicts(n)
    }
}

/// An integration binary with its stderr in a file, killed on drop.
pub struct Integration {
    proc: Proc,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Integration {
    pub fn start(binary: &Path, socket: &Path, name: &str, connect: &str) -> Self {
        let dir = run_dir("hv-vss-integration-log-");
        let log = dir.path().join("stderr.log");
        let proc = Proc::spawn(
            Command::new(binary)
                .args(["--config", "/dev/null", "--name", name, "--timeout", "60s"])
                .arg("--socket")
                .arg(socket)
                .arg("--connect")
                .arg(connect)
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let i = Self {
            proc,
            log,
            _dir: dir,
        };
        wait_until("integration registration", || {
            i.log().contains("registered with hv-vssd")
        });
        i
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(mut self) {
        signal(self.proc.pid(), rustix::process::Signal::TERM);
        let _ = self.proc.0.wait();
    }
}

/// Copies `image` (sparse), as a backup reads a snapshot.
pub fn copy_image(image: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("--sparse=always").arg(image).arg(to));
}

/// `fsck.ext4 -fn` on `image`: its exit status and output.
pub fn fsck(image: &Path) -> (i32, String) {
    let out = Command::new("fsck.ext4")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An existing image loop-mounted read-write in a temp dir; unmounted and detached on drop.
pub struct MountedImage {
    device: String,
    pub mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl MountedImage {
    pub fn mount(image: &Path) -> Self {
        let dir = run_dir("hv-vss-copy-");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let m = Self {
            device,
            mount_point,
            _dir: dir,
        };
        run_ok(Command::new("mount").arg(&m.device).arg(&m.mount_point));
        m
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

// ---- the integrations against the in-test app socket server ----------------------------

/// An app socket server (protocol v1, in-test) in its own temp dir.
pub struct AppServer {
    pub server: hv_vss_testutil::app_server::TestAppServer,
    _dir: tempfile::TempDir,
}

impl AppServer {
    pub fn start() -> Self {
        let dir = run_dir("hv-vss-app-server-");
        let server =
            hv_vss_testutil::app_server::TestAppServer::start(&dir.path().join("app.sock"))
                .unwrap();
        Self { server, _dir: dir }
    }

    /// Starts `binary` registered as `name`, connecting to the database with `connect`,
    /// with `extra` flags; waits for the registration.
    pub fn integration(&self, binary: &str, name: &str, connect: &str, extra: &[&str]) -> Proc {
        let p = Proc::spawn(
            Command::new(binary)
                .args(["--config", "/dev/null", "--name", name, "--socket"])
                .arg(self.server.path())
                .arg("--connect")
                .arg(connect)
                .args(extra),
        );
        assert!(self.server.wait_registered(name, WAIT), "{name} registered");
        p
    }

    /// Sends `message` to `name` and returns its ack.
    pub fn ask(
        &self,
        name: &str,
        message: &hv_vss_app_protocol::DaemonMessage,
    ) -> hv_vss_app_protocol::Ack {
        let (kind, txn, _) = message.as_event().expect("an event that is acked");
        self.server.send(name, message).unwrap();
        self.server
            .wait_ack(name, txn, WAIT)
            .unwrap_or_else(|| panic!("{name} acked {kind:?} {txn}"))
    }

    /// Waits until `name` sent `n` acks for `txn` (freeze and thaw share their txn).
    pub fn wait_acks(&self, name: &str, txn: u64, n: usize) {
        let count = || {
            self.server
                .acks()
                .iter()
                .filter(|(who, a)| who == name && a.txn == txn)
                .count()
        };
        wait_until("acks", || count() >= n);
        assert_eq!(count(), n, "{name}: acks for txn {txn}");
    }

    /// With the database down, check and freeze are acked ok by `start(&[])`'s integration
    /// and vetoed, naming the database as unreachable, by `start(&["--veto-if-unreachable"])`.
    pub fn assert_vetoes_unreachable_only_when_configured(
        &self,
        name: &str,
        start: impl Fn(&[&str]) -> Proc,
    ) {
        use hv_vss_app_protocol::DaemonMessage;
        let events = |txn: u64| {
            [
                DaemonMessage::Check {
                    txn,
                    deadline_ms: 5000,
                },
                DaemonMessage::Freeze {
                    txn: txn + 1,
                    deadline_ms: 5000,
                },
            ]
        };
        let mut lenient = start(&[]);
        for e in events(1) {
            assert!(self.ask(name, &e).ok, "lenient: {e:?}");
        }
        lenient.kill9();
        assert!(self.server.wait_gone(name, WAIT));
        let _strict = start(&["--veto-if-unreachable"]);
        for e in events(3) {
            let ack = self.ask(name, &e);
            assert!(!ack.ok, "strict: {e:?}");
            assert!(
                ack.message.unwrap().contains("unreachable"),
                "strict: {e:?}"
            );
        }
    }
}

impl Pg {
    /// Creates table `t (n bigint primary key)` and starts a writer committing into it.
    pub fn start_writer(&self) -> Writer {
        self.client()
            .batch_execute("CREATE TABLE t (n bigint PRIMARY KEY)")
            .unwrap();
        let mut conn = self.client();
        Writer::start(move |n| {
            conn.execute("INSERT INTO t VALUES ($1)", &[&(n as i64)])
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
