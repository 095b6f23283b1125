//! `hv-vss app run`: the real binary against the in-test protocol v1 server
//! (`hv_vss_testutil::app_server`). Commands write what they saw to a file the test reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hv_vss_app_protocol::DaemonMessage;
use hv_vss_testutil::app_server::TestAppServer;

const WAIT: Duration = Duration::from_secs(10);

struct App {
    child: Child,
}

impl App {
    fn start(socket: &Path, name: &str, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
            .args(["app", "run", "--name", name, "--socket"])
            .arg(socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let end = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "hv-vss app run did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    dir: tempfile::TempDir,
    server: TestAppServer,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hv-vss-app-cli-")
            .tempdir()
            .unwrap();
        let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
        Self { dir, server }
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }
    /// A command that appends `WORD $HV_VSS_EVENT $HV_VSS_TXN` to the log.
    fn logging(&self, word: &str) -> String {
        format!(
            "echo \"{word} $HV_VSS_EVENT $HV_VSS_TXN $HV_VSS_REASON\" >> {}",
            self.log().display()
        )
    }
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim_end().to_owned())
            .collect()
    }
    fn wait_log(&self, line: &str) -> bool {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.log_lines().iter().any(|l| l == line) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

fn event(kind: &str, txn: u64, deadline_ms: u64) -> DaemonMessage {
    match kind {
        "check" => DaemonMessage::Check { txn, deadline_ms },
        "freeze" => DaemonMessage::Freeze { txn, deadline_ms },
        "thaw" => DaemonMessage::Thaw { txn, deadline_ms },
        _ => DaemonMessage::Abort {
            txn,
            reason: kind.to_owned(),
        },
    }
}

#[test]
fn commands_run_per_event_and_exit_0_acks_ok() {
    let s = Setup::new();
    let app = App::start(
        s.server.path(),
        "wrap",
        &[
            "--tier",
            "20",
            "--timeout",
            "4s",
            "--on-freeze",
            &s.logging("F"),
            "--on-thaw",
            &s.logging("T"),
        ],
    );
    assert!(s.server.wait_registered("wrap", WAIT));
    let reg = &s.server.registrations()[0];
    assert_eq!((reg.tier, reg.timeout_ms), (Some(20), Some(4000)));
    s.server.send("wrap", &event("check", 1, 5000)).unwrap();
    assert!(
        s.server.wait_ack("wrap", 1, WAIT).unwrap().ok,
        "no --on-check: ok"
    );
    s.server.send("wrap", &event("freeze", 2, 5000)).unwrap();
    assert!(s.server.wait_ack("wrap", 2, WAIT).unwrap().ok);
    assert_eq!(s.log_lines(), ["F freeze 2"]);
    s.server.send("wrap", &event("thaw", 2, 5000)).unwrap();
    let end = Instant::now() + WAIT;
    while s.server.acks().len() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let acks = s.server.acks();
    assert_eq!(acks.len(), 3, "{acks:?}");
    assert!(acks[2].1.ok && acks[2].1.txn == 2);
    assert_eq!(s.log_lines(), ["F freeze 2", "T thaw 2"]);
    assert!(app.terminate().success(), "SIGTERM exits 0");
    assert!(s.server.wait_gone("wrap", WAIT));
}

#[test]
fn a_failing_command_acks_not_ok_with_its_status() {
    let s = Setup::new();
    let _app = App::start(
        s.server.path(),
        "fail",
        &[
            "--on-check",
            "exit 4",
            "--on-freeze",
            "echo flushing; exit 3",
            "--on-thaw",
            "true",
        ],
    );
    assert!(s.server.wait_registered("fail", WAIT));
    s.server.send("fail", &event("check", 1, 5000)).unwrap();
    let ack = s.server.wait_ack("fail", 1, WAIT).unwrap();
    assert!(!ack.ok);
    assert!(ack.message.unwrap().contains("exit status: 4"));
    s.server.send("fail", &event("freeze", 2, 5000)).unwrap();
    let ack = s.server.wait_ack("fail", 2, WAIT).unwrap();
    assert!(!ack.ok);
    let message = ack.message.unwrap();
    assert!(
        message.contains("on-freeze") && message.contains("exit status: 3"),
        "{message}"
    );
}

#[test]
fn a_command_past_the_deadline_is_killed_with_its_children_and_acks_not_ok() {
    let s = Setup::new();
    let pidfile = s.dir.path().join("grandchild.pid");
    let freeze = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let _app = App::start(
        s.server.path(),
        "slow",
        &["--on-freeze", &freeze, "--on-thaw", "true"],
    );
    assert!(s.server.wait_registered("slow", WAIT));
    let sent = Instant::now();
    s.server.send("slow", &event("freeze", 7, 400)).unwrap();
    let ack = s.server.wait_ack("slow", 7, WAIT).unwrap();
    let took = sent.elapsed();
    assert!(!ack.ok);
    assert!(ack.message.unwrap().contains("deadline"));
    assert!(took < Duration::from_secs(5), "acked after {took:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The forked sleep died with the group (it may linger as a zombie until reaped by
    // init, so look at its state).
    let end = Instant::now() + WAIT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let gone = stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z");
        if gone {
            break;
        }
        assert!(
            Instant::now() < end,
            "grandchild {pid} still running: {stat}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn abort_runs_on_abort_and_is_not_acked() {
    let s = Setup::new();
    let _app = App::start(
        s.server.path(),
        "ab",
        &[
            "--on-freeze",
            "true",
            "--on-thaw",
            &s.logging("T"),
            "--on-abort",
            &s.logging("A"),
        ],
    );
    assert!(s.server.wait_registered("ab", WAIT));
    s.server.send("ab", &event("freeze", 3, 5000)).unwrap();
    assert!(s.server.wait_ack("ab", 3, WAIT).unwrap().ok);
    s.server.send("ab", &event("host gave up", 3, 0)).unwrap();
    assert!(s.wait_log("A abort 3 host gave up"), "{:?}", s.log_lines());
    s.server.send("ab", &event("check", 4, 5000)).unwrap();
    assert!(s.server.wait_ack("ab", 4, WAIT).is_some());
    assert_eq!(
        s.server.acks().iter().filter(|(_, a)| a.txn == 3).count(),
        1
    );
    assert_eq!(s.log_lines(), ["A abort 3 host gave up"]);
}

#[test]
fn without_on_abort_an_abort_runs_the_thaw_command() {
    let s = Setup::new();
    let _app = App::start(
        s.server.path(),
        "ab2",
        &["--on-freeze", "true", "--on-thaw", &s.logging("T")],
    );
    assert!(s.server.wait_registered("ab2", WAIT));
    s.server.send("ab2", &event("freeze", 5, 5000)).unwrap();
    assert!(s.server.wait_ack("ab2", 5, WAIT).is_some());
    s.server.send("ab2", &event("timed out", 5, 0)).unwrap();
    assert!(s.wait_log("T abort 5 timed out"), "{:?}", s.log_lines());
}

#[test]
fn sigterm_while_holding_runs_the_abort_command_and_exits_0() {
    let s = Setup::new();
    let app = App::start(
        s.server.path(),
        "hold",
        &["--on-freeze", "true", "--on-thaw", &s.logging("T")],
    );
    assert!(s.server.wait_registered("hold", WAIT));
    s.server.send("hold", &event("freeze", 9, 5000)).unwrap();
    assert!(s.server.wait_ack("hold", 9, WAIT).is_some());
    assert!(app.terminate().success());
    assert_eq!(s.log_lines(), ["T abort 9 client stopping while holding"]);
}

#[test]
fn bad_arguments_are_refused_before_connecting() {
    let s = Setup::new();
    for (args, needle) in [
        (
            vec!["--tier", "256", "--on-freeze", "true", "--on-thaw", "true"],
            "256",
        ),
        (
            vec!["--timeout", "0", "--on-freeze", "true", "--on-thaw", "true"],
            "zero",
        ),
        (vec!["--on-freeze", "true"], "--on-thaw"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
            .args(["app", "run", "--name", "x", "--socket"])
            .arg(s.server.path())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(s.server.registrations().is_empty());
}

#[test]
fn a_taken_name_exits_1_saying_so() {
    let s = Setup::new();
    let _first = App::start(
        s.server.path(),
        "same",
        &["--on-freeze", "true", "--on-thaw", "true"],
    );
    assert!(s.server.wait_registered("same", WAIT));
    let out = Command::new(env!("CARGO_BIN_EXE_hv-vss"))
        .args(["app", "run", "--name", "same", "--socket"])
        .arg(s.server.path())
        .args(["--on-freeze", "true", "--on-thaw", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the registration") && err.contains("taken"),
        "{err}"
    );
}
