//! The client against the in-test protocol v1 server (`hv_vss_testutil::app_server`): the
//! client's side of the contract. End-to-end tests through hv-vssd are in the daemon's and
//! the integrations' tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hv_vss_app_protocol::DaemonMessage;
use hv_vss_client::run::{CONNECTION_LOST, STOPPING};
use hv_vss_client::{
    Backoff, Config, Connection, Error, Event, Handler, HandlerResult, Registration, Request,
};
use hv_vss_testutil::app_server::TestAppServer;

const WAIT: Duration = Duration::from_secs(10);

fn socket_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hv-vss-client-")
        .tempdir()
        .unwrap()
}

/// Records every handler call as text; vetoes the stages named in `veto`.
#[derive(Clone, Default)]
struct Recorder {
    calls: Arc<Mutex<Vec<String>>>,
    veto: Arc<Mutex<Vec<&'static str>>>,
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, stage: &'static str, text: String) -> HandlerResult {
        self.calls.lock().unwrap().push(text);
        if self.veto.lock().unwrap().contains(&stage) {
            return Err(format!("{stage} vetoed by the test").into());
        }
        Ok(())
    }
    fn wait_call(&self, call: &str) -> bool {
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if self.calls().iter().any(|c| c == call) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Handler for Recorder {
    fn on_check(&mut self, r: &Request) -> HandlerResult {
        self.record("check", format!("check {}", r.txn))
    }
    fn on_freeze(&mut self, r: &Request) -> HandlerResult {
        self.record("freeze", format!("freeze {}", r.txn))
    }
    fn on_thaw(&mut self, r: &Request) -> HandlerResult {
        self.record("thaw", format!("thaw {}", r.txn))
    }
    fn on_abort(&mut self, txn: u64, reason: &str) -> HandlerResult {
        self.record("abort", format!("abort {txn} {reason}"))
    }
}

/// `run_until` on a thread; stopped and joined on drop.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

impl Running {
    fn start(config: Config, recorder: &Recorder) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, mut handler) = (stop.clone(), recorder.clone());
        let thread =
            std::thread::spawn(move || hv_vss_client::run_until(&config, &mut handler, &s));
        Self {
            stop,
            thread: Some(thread),
        }
    }
    fn finish(mut self) -> Result<(), Error> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(server_path: &std::path::Path, name: &str) -> Config {
    let mut c = Config::new(Registration::new(name));
    c.socket = server_path.to_path_buf();
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    c
}

fn check(txn: u64) -> DaemonMessage {
    DaemonMessage::Check {
        txn,
        deadline_ms: 5000,
    }
}
fn freeze(txn: u64) -> DaemonMessage {
    DaemonMessage::Freeze {
        txn,
        deadline_ms: 5000,
    }
}
fn thaw(txn: u64) -> DaemonMessage {
    DaemonMessage::Thaw {
        txn,
        deadline_ms: 5000,
    }
}
fn abort(txn: u64) -> DaemonMessage {
    DaemonMessage::Abort {
        txn,
        reason: "backup failed".into(),
    }
}

#[test]
fn register_sends_name_tier_and_timeout() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let reg = Registration::new("db")
        .tier(7)
        .timeout(Duration::from_millis(1500));
    let _conn = Connection::open(server.path(), &reg).unwrap();
    assert!(server.wait_registered("db", WAIT));
    let regs = server.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].name, "db");
    assert_eq!(regs[0].tier, Some(7));
    assert_eq!(regs[0].timeout_ms, Some(1500));
}

#[test]
fn a_missing_socket_is_a_connect_error_naming_the_path() {
    let dir = socket_dir();
    let path = dir.path().join("none.sock");
    let err = Connection::open(&path, &Registration::new("x")).unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("none.sock"), "{err}");
    assert!(err.is_transient());
}

#[test]
fn an_invalid_name_is_refused_before_sending() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    for name in ["", "a\nb", &"n".repeat(129)] {
        let err = Connection::open(server.path(), &Registration::new(name)).unwrap_err();
        assert!(matches!(err, Error::InvalidRegistration(_)), "{err:?}");
    }
    assert!(server.registrations().is_empty());
}

#[test]
fn a_duplicate_name_is_rejected_and_run_stops_with_that_error() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let _first = Connection::open(server.path(), &Registration::new("dup")).unwrap();
    let err = Connection::open(server.path(), &Registration::new("dup")).unwrap_err();
    match &err {
        Error::Rejected(message) => assert!(message.contains("taken"), "{message}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(!err.is_transient());
    // The loop does not retry a name another live client holds.
    let result = hv_vss_client::run(&config(server.path(), "dup"), &mut Recorder::default());
    assert!(matches!(result, Err(Error::Rejected(_))), "{result:?}");
}

#[test]
fn events_reach_the_handler_and_are_acked_with_their_txn() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let rec = Recorder::default();
    let running = Running::start(config(server.path(), "app"), &rec);
    assert!(server.wait_registered("app", WAIT));
    for (msg, txn) in [(check(41), 41), (freeze(42), 42), (thaw(42), 42)] {
        let before = server.acks().len();
        server.send("app", &msg).unwrap();
        // Exactly one new ack per event, naming its txn.
        let end = Instant::now() + WAIT;
        while server.acks().len() == before && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        let acks = server.acks();
        assert_eq!(acks.len(), before + 1, "{acks:?}");
        let ack = &acks[before].1;
        assert_eq!((ack.txn, ack.ok, ack.message.as_deref()), (txn, true, None));
    }
    assert_eq!(rec.calls(), ["check 41", "freeze 42", "thaw 42"]);
    running.finish().unwrap();
}

#[test]
fn a_handler_error_is_a_not_ok_ack_with_its_message() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let rec = Recorder::default();
    rec.veto.lock().unwrap().extend(["check", "freeze"]);
    let _running = Running::start(config(server.path(), "veto"), &rec);
    assert!(server.wait_registered("veto", WAIT));
    server.send("veto", &check(1)).unwrap();
    let ack = server.wait_ack("veto", 1, WAIT).unwrap();
    assert!(!ack.ok);
    assert_eq!(ack.message.as_deref(), Some("check vetoed by the test"));
    server.send("veto", &freeze(2)).unwrap();
    let ack = server.wait_ack("veto", 2, WAIT).unwrap();
    assert!(!ack.ok);
    assert_eq!(ack.message.as_deref(), Some("freeze vetoed by the test"));
}

#[test]
fn abort_reaches_the_handler_and_is_not_acked() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let rec = Recorder::default();
    let _running = Running::start(config(server.path(), "ab"), &rec);
    assert!(server.wait_registered("ab", WAIT));
    server.send("ab", &freeze(9)).unwrap();
    assert!(server.wait_ack("ab", 9, WAIT).is_some());
    server.send("ab", &abort(9)).unwrap();
    assert!(rec.wait_call("abort 9 backup failed"));
    // A later event is served: everything before it was read and handled.
    server.send("ab", &check(10)).unwrap();
    assert!(server.wait_ack("ab", 10, WAIT).is_some());
    let acks_for_9 = server.acks().iter().filter(|(_, a)| a.txn == 9).count();
    assert_eq!(
        acks_for_9,
        1,
        "only the freeze is acked: {:?}",
        server.acks()
    );
}

#[test]
fn unknown_daemon_message_types_are_skipped() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let mut conn = Connection::open(server.path(), &Registration::new("u")).unwrap();
    assert!(server.wait_registered("u", WAIT));
    server
        .send_raw("u", b"{\"type\":\"progress\",\"txn\":3,\"percent\":50}\n")
        .unwrap();
    server
        .send_raw(
            "u",
            b"{\"type\":\"check\",\"txn\":3,\"deadline_ms\":100,\"new_field\":true}\n",
        )
        .unwrap();
    match conn.next_event_timeout(WAIT).unwrap() {
        Some(Event::Check(r)) => assert_eq!(r.txn, 3),
        other => panic!("expected check 3, got {other:?}"),
    }
}

#[test]
fn the_deadline_is_counted_from_receipt() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let mut conn = Connection::open(server.path(), &Registration::new("d")).unwrap();
    assert!(server.wait_registered("d", WAIT));
    server
        .send(
            "d",
            &DaemonMessage::Freeze {
                txn: 1,
                deadline_ms: 3000,
            },
        )
        .unwrap();
    let Some(Event::Freeze(r)) = conn.next_event_timeout(WAIT).unwrap() else {
        panic!("freeze expected")
    };
    let left = r.remaining();
    assert!(left <= Duration::from_millis(3000), "{left:?}");
    assert!(left > Duration::from_millis(2000), "{left:?}");
    // The largest deadline the wire allows is bounded, not an overflow.
    server
        .send(
            "d",
            &DaemonMessage::Thaw {
                txn: 1,
                deadline_ms: u64::MAX,
            },
        )
        .unwrap();
    let Some(Event::Thaw(r)) = conn.next_event_timeout(WAIT).unwrap() else {
        panic!("thaw expected")
    };
    assert!(r.remaining() > Duration::from_secs(3600));
}

#[test]
fn oversize_and_garbage_lines_are_errors_not_panics() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let cases: [(&str, Vec<u8>); 5] = [
        ("oversize", vec![b'x'; 70 * 1024]),
        ("oversize with newline", {
            let mut v = vec![b' '; 65 * 1024];
            v.push(b'\n');
            v
        }),
        ("not json", b"hello there\n".to_vec()),
        ("not utf-8", b"{\"type\":\"\xff\"}\n".to_vec()),
        (
            "bad fields",
            b"{\"type\":\"freeze\",\"txn\":\"seven\"}\n".to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let mut conn = Connection::open(server.path(), &Registration::new("g")).unwrap();
        assert!(server.wait_registered("g", WAIT));
        server.send_raw("g", &bytes).unwrap();
        let err = conn.next_event_timeout(WAIT).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{what}: {err:?}");
        assert!(err.is_transient(), "{what}");
        drop(conn);
        assert!(server.wait_gone("g", WAIT), "{what}");
    }
}

#[test]
fn run_reconnects_after_garbage_from_the_daemon() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let rec = Recorder::default();
    let _running = Running::start(config(server.path(), "gr"), &rec);
    assert!(server.wait_registered("gr", WAIT));
    server.send_raw("gr", &[b'z'; 70 * 1024]).unwrap();
    let end = Instant::now() + WAIT;
    while server.registrations().len() < 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.registrations().len(), 2, "registered again");
    assert!(server.wait_registered("gr", WAIT));
    server.send("gr", &check(5)).unwrap();
    assert!(server.wait_ack("gr", 5, WAIT).unwrap().ok);
}

#[test]
fn a_daemon_that_keeps_dropping_the_client_is_retried_with_growing_pauses() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let rec = Recorder::default();
    let mut cfg = config(server.path(), "drop");
    cfg.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    let running = Running::start(cfg, &rec);
    // Every registration is answered with garbage at once, for 2 s.
    let end = Instant::now() + Duration::from_secs(2);
    let mut answered = 0;
    while Instant::now() < end {
        if server.registrations().len() > answered
            && server.wait_registered("drop", Duration::from_millis(50))
        {
            answered = server.registrations().len();
            let _ = server.send_raw("drop", b"garbage\n");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(running);
    // Pauses of 100, 200, 400, 800 ms fit 5 attempts into 2 s; without them there would be
    // one per round trip.
    let n = server.registrations().len();
    assert!((3..=6).contains(&n), "{n} registrations in 2 s");
}

#[test]
fn run_waits_for_a_missing_socket_and_reconnects_after_a_restart() {
    let dir = socket_dir();
    let path = dir.path().join("app.sock");
    let rec = Recorder::default();
    let mut cfg = config(&path, "rs");
    cfg.registration = cfg.registration.tier(3);
    let _running = Running::start(cfg, &rec);
    // The daemon is not there yet: the loop retries.
    std::thread::sleep(Duration::from_millis(300));
    let server = TestAppServer::start(&path).unwrap();
    assert!(server.wait_registered("rs", WAIT));
    server.send("rs", &check(1)).unwrap();
    assert!(server.wait_ack("rs", 1, WAIT).is_some());
    // The daemon restarts.
    server.stop();
    std::thread::sleep(Duration::from_millis(100));
    let server = TestAppServer::start(&path).unwrap();
    assert!(server.wait_registered("rs", WAIT));
    let regs = server.registrations();
    assert_eq!((regs[0].name.as_str(), regs[0].tier), ("rs", Some(3)));
    server.send("rs", &check(2)).unwrap();
    assert!(server.wait_ack("rs", 2, WAIT).unwrap().ok);
}

#[test]
fn a_hold_is_released_when_the_daemon_goes_and_its_abort_is_not_passed_twice() {
    let dir = socket_dir();
    let path = dir.path().join("app.sock");
    let server = TestAppServer::start(&path).unwrap();
    let rec = Recorder::default();
    let _running = Running::start(config(&path, "hold"), &rec);
    assert!(server.wait_registered("hold", WAIT));
    server.send("hold", &freeze(77)).unwrap();
    assert!(server.wait_ack("hold", 77, WAIT).unwrap().ok);
    server.stop();
    assert!(
        rec.wait_call(&format!("abort 77 {CONNECTION_LOST}")),
        "{:?}",
        rec.calls()
    );
    // The restarted daemon sends the abort it owes first; then a new backup.
    let server = TestAppServer::start(&path).unwrap();
    assert!(server.wait_registered("hold", WAIT));
    server.send("hold", &abort(77)).unwrap();
    // An abort for a txn this process never froze is passed on.
    server.send("hold", &abort(76)).unwrap();
    server.send("hold", &check(78)).unwrap();
    assert!(server.wait_ack("hold", 78, WAIT).is_some());
    assert_eq!(
        rec.calls(),
        [
            "freeze 77".to_string(),
            format!("abort 77 {CONNECTION_LOST}"),
            "abort 76 backup failed".to_string(),
            "check 78".to_string(),
        ]
    );
}

#[test]
fn stopping_while_holding_releases_the_hold() {
    let dir = socket_dir();
    let server = TestAppServer::start(&dir.path().join("app.sock")).unwrap();
    let rec = Recorder::default();
    let running = Running::start(config(server.path(), "st"), &rec);
    assert!(server.wait_registered("st", WAIT));
    server.send("st", &freeze(5)).unwrap();
    assert!(server.wait_ack("st", 5, WAIT).is_some());
    running.finish().unwrap();
    assert_eq!(
        rec.calls(),
        ["freeze 5".to_string(), format!("abort 5 {STOPPING}")]
    );
    assert!(server.wait_gone("st", WAIT));
}

#[test]
fn a_thawed_hold_is_not_released_again_on_disconnect() {
    let dir = socket_dir();
    let path = dir.path().join("app.sock");
    let server = TestAppServer::start(&path).unwrap();
    let rec = Recorder::default();
    let _running = Running::start(config(&path, "t"), &rec);
    assert!(server.wait_registered("t", WAIT));
    server.send("t", &freeze(1)).unwrap();
    assert!(server.wait_ack("t", 1, WAIT).is_some());
    server.send("t", &thaw(1)).unwrap();
    assert!(server.wait_ack("t", 1, WAIT).is_some());
    assert!(rec.wait_call("thaw 1"));
    server.stop();
    let server = TestAppServer::start(&path).unwrap();
    assert!(server.wait_registered("t", WAIT));
    assert_eq!(rec.calls(), ["freeze 1", "thaw 1"]);
}
