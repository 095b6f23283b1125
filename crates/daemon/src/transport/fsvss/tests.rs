//! The FreeBSD transport driven by the model of FreeBSD's driver (`hv_vss_sim::freebsd`)
//! through [`FsVssDevice`]: the test plays the host (and an `/dev/hv_appvss_dev`
//! application where one is registered) and advances the model's clock.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hv_vss_core::{Action, Coordinator, Event, Millis, RequestId};
use hv_vss_protocol::freebsd::{OptStatus, build_ack};
use hv_vss_protocol::{HvStatus, VssOperation};
use hv_vss_sim::freebsd::{
    AnswerReason, Device, DeviceError, Disposition, EventKind, FreeBsdDriver, HostAnswer,
    TIMEOUT_LIMIT,
};

use super::*;

/// The model, shared by the test and the device adapter, and what the test makes the
/// "kernel" do besides.
#[derive(Debug, Default)]
struct Model {
    driver: FreeBsdDriver,
    /// Rewrites the next READ result (a kernel that returns something we do not know).
    rewrite_next_read: Option<fn(&mut HvVssOptMsg)>,
    /// poll says POLLIN even with nothing queued (a spurious wake-up).
    spurious_pollin: bool,
}

type Shared = Rc<RefCell<Model>>;

/// [`FsVssDevice`] over the model: the daemon's side of `/dev/hv_fsvss_dev`.
#[derive(Debug)]
struct ModelDevice(Shared);

fn io(e: DeviceError) -> std::io::Error {
    std::io::Error::other(e)
}

impl FsVssDevice for ModelDevice {
    type Location = Shared;

    fn open(at: &Shared) -> Result<Self, OpenError> {
        match at.borrow_mut().driver.open(Device::Daemon) {
            Ok(()) => Ok(Self(at.clone())),
            // What open(2) gives for EBUSY.
            Err(DeviceError::Busy(_)) => Err(OpenError::from(std::io::Error::from(
                std::io::ErrorKind::ResourceBusy,
            ))),
            Err(e) => Err(OpenError::from(io(e))),
        }
    }

    fn poll_in(&mut self) -> std::io::Result<bool> {
        let model = self.0.borrow();
        Ok(model.driver.poll_in(Device::Daemon).map_err(io)? || model.spurious_pollin)
    }

    fn read(&mut self) -> std::io::Result<HvVssOptMsg> {
        let mut model = self.0.borrow_mut();
        let mut msg = model.driver.read(Device::Daemon).map_err(io)?;
        if let Some(rewrite) = model.rewrite_next_read.take() {
            rewrite(&mut msg);
        }
        Ok(msg)
    }

    fn write(&mut self, ack: &HvVssOptMsg) -> std::io::Result<()> {
        self.0
            .borrow_mut()
            .driver
            .write(Device::Daemon, ack)
            .map(|_matched| ())
            .map_err(io)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl Drop for ModelDevice {
    fn drop(&mut self) {
        let _ = self.0.borrow_mut().driver.close(Device::Daemon);
    }
}

type ModelTransport = FsVssTransport<ModelDevice>;

fn open(model: &Shared) -> Result<ModelTransport, FsVssError> {
    ModelTransport::open(model, Path::new("/dev/hv_fsvss_dev"))
}

fn host(model: &Shared, op: VssOperation) -> Disposition {
    model.borrow_mut().driver.host_request(op)
}

fn advance(model: &Shared, by: Duration) {
    model.borrow_mut().driver.advance(by);
}

fn answers(model: &Shared) -> Vec<HostAnswer> {
    model.borrow_mut().driver.take_answers()
}

fn events(model: &Shared) -> Vec<EventKind> {
    model
        .borrow()
        .driver
        .events()
        .iter()
        .map(|e| e.kind.clone())
        .collect()
}

fn answer(op: VssOperation, status: HvStatus, reason: AnswerReason) -> HostAnswer {
    HostAnswer { op, status, reason }
}

/// The one request `recv` returns now.
fn one_request(t: &mut ModelTransport) -> (u64, HostOp) {
    match t.recv().unwrap().as_slice() {
        [Incoming::Request { key, op }] => (*key, *op),
        other => panic!("expected one request, got {other:?}"),
    }
}

/// The host sends `op`, we read it and answer success, the host gets S_OK: the transport
/// serves. Returns what the coordinator was handed.
fn serves(model: &Shared, t: &mut ModelTransport, op: VssOperation) -> HostOp {
    host(model, op);
    let (key, ours) = one_request(t);
    t.reply(key, Status::Ok).unwrap();
    assert_eq!(
        answers(model),
        [answer(op, HvStatus::S_OK, AnswerReason::Acked)]
    );
    ours
}

/// The application on `/dev/hv_appvss_dev` (played by the test) reads and acks.
fn app_serves(model: &Shared, success: bool) {
    let mut model = model.borrow_mut();
    assert!(model.driver.poll_in(Device::App).unwrap(), "app not asked");
    let msg = model.driver.read(Device::App).unwrap();
    let ack = build_ack(msg.opt, msg.msgid, success);
    assert!(model.driver.write(Device::App, &ack).unwrap());
}

fn queued_to(model: &Shared) -> Vec<Device> {
    events(model)
        .into_iter()
        .filter_map(|e| match e {
            EventKind::Queued { device, .. } => Some(device),
            _ => None,
        })
        .collect()
}

#[test]
fn check_freeze_thaw_cycle_is_read_mapped_and_acked_with_the_msgid() {
    let model = Shared::default();
    let mut t = open(&model).unwrap();
    for (host_op, ours) in [
        (VssOperation::HOT_BACKUP, HostOp::Check),
        (VssOperation::FREEZE, HostOp::Freeze),
        (VssOperation::THAW, HostOp::Thaw),
    ] {
        let Disposition::Dispatched(msgid) = host(&model, host_op) else {
            panic!("{host_op:?} not dispatched");
        };
        let (key, op) = one_request(&mut t);
        assert_eq!(op, ours);
        assert_eq!(t.recv().unwrap(), [], "the request was read twice");
        assert!(answers(&model).is_empty(), "answered before our ack");
        assert_eq!(t.reply(key, Status::Ok).unwrap(), Delivery::Sent);
        assert_eq!(
            answers(&model),
            [answer(host_op, HvStatus::S_OK, AnswerReason::Acked)]
        );
        assert!(events(&model).contains(&EventKind::Acked {
            device: Device::Daemon,
            msgid,
            status: OptStatus::SUCCESS,
        }));
    }
    // A failure is acked with status 1, and the host gets E_FAIL.
    host(&model, VssOperation::FREEZE);
    let (key, _) = one_request(&mut t);
    t.reply(key, Status::Fail).unwrap();
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::FREEZE,
            HvStatus::E_FAIL,
            AnswerReason::FailAck(Device::Daemon)
        )]
    );
    assert_eq!(t.pending.len(), 0);
    assert!(matches!(
        t.reply(key, Status::Ok),
        Err(FsVssError::UnknownRequest(k)) if k == key
    ));
}

#[test]
fn an_empty_read_sends_the_loop_back_to_poll() {
    let model = Shared::default();
    let mut t = open(&model).unwrap();
    // Nothing queued: no READ at all.
    assert_eq!(t.recv().unwrap(), []);
    assert!(!events(&model).contains(&EventKind::EmptyRead(Device::Daemon)));
    // A spurious POLLIN: one READ comes back empty, and recv returns without spinning.
    model.borrow_mut().spurious_pollin = true;
    assert_eq!(t.recv().unwrap(), []);
    let empty_reads = events(&model)
        .iter()
        .filter(|e| **e == EventKind::EmptyRead(Device::Daemon))
        .count();
    assert_eq!(empty_reads, 1);
    model.borrow_mut().spurious_pollin = false;
    assert_eq!(serves(&model, &mut t, VssOperation::FREEZE), HostOp::Freeze);
}

#[test]
fn an_application_on_hv_appvss_dev_is_asked_before_us_and_after_us_on_thaw() {
    let model = Shared::default();
    model.borrow_mut().driver.open(Device::App).unwrap();
    let mut t = open(&model).unwrap();

    host(&model, VssOperation::FREEZE);
    assert_eq!(t.recv().unwrap(), [], "we were asked before the app");
    app_serves(&model, true);
    let (key, op) = one_request(&mut t);
    assert_eq!(op, HostOp::Freeze);
    t.reply(key, Status::Ok).unwrap();
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::FREEZE,
            HvStatus::S_OK,
            AnswerReason::Acked
        )]
    );

    host(&model, VssOperation::THAW);
    let (key, op) = one_request(&mut t);
    assert_eq!(op, HostOp::Thaw);
    assert!(
        !model.borrow().driver.poll_in(Device::App).unwrap(),
        "the app was asked to thaw before us"
    );
    t.reply(key, Status::Ok).unwrap();
    assert!(answers(&model).is_empty(), "answered before the app thawed");
    app_serves(&model, true);
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::THAW,
            HvStatus::S_OK,
            AnswerReason::Acked
        )]
    );
    assert_eq!(
        queued_to(&model),
        [Device::App, Device::Daemon, Device::Daemon, Device::App]
    );

    // The app's failure answers the host without asking us.
    host(&model, VssOperation::HOT_BACKUP);
    app_serves(&model, false);
    assert_eq!(t.recv().unwrap(), []);
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::HOT_BACKUP,
            HvStatus::E_FAIL,
            AnswerReason::FailAck(Device::App)
        )]
    );
    // hv-vssd only ever opened its own device; the one App open is the test's.
    let app_opens = events(&model)
        .iter()
        .filter(|e| **e == EventKind::Opened(Device::App))
        .count();
    assert_eq!(app_opens, 1);
}

#[test]
fn an_answer_after_the_drivers_15_s_is_dropped_and_the_next_request_is_served() {
    let model = Shared::default();
    let mut t = open(&model).unwrap();
    let Disposition::Dispatched(late_msgid) = host(&model, VssOperation::FREEZE) else {
        panic!("not dispatched");
    };
    let (late_key, _) = one_request(&mut t);
    advance(&model, TIMEOUT_LIMIT);
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::FREEZE,
            HvStatus::E_FAIL,
            AnswerReason::Timeout
        )]
    );
    // Our answer comes too late: written, dropped by the driver, nothing reaches the host.
    assert_eq!(t.reply(late_key, Status::Ok).unwrap(), Delivery::Sent);
    assert!(answers(&model).is_empty());
    assert!(events(&model).contains(&EventKind::AckDropped {
        device: Device::Daemon,
        msgid: late_msgid
    }));
    // Just inside the timer an answer still counts.
    host(&model, VssOperation::THAW);
    let (key, _) = one_request(&mut t);
    advance(&model, TIMEOUT_LIMIT - Duration::from_millis(1));
    t.reply(key, Status::Ok).unwrap();
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::THAW,
            HvStatus::S_OK,
            AnswerReason::Acked
        )]
    );
}

/// The coordinator, with the deadlines the config gives the FreeBSD transport, answers a
/// FREEZE whose filesystem work never finishes before the driver's timer fires: the host
/// gets our E_FAIL (FailAck), not the driver's Timeout, even when an application on
/// `/dev/hv_appvss_dev` took a second before us.
#[test]
fn our_freeze_deadline_ends_before_the_drivers_timer() {
    let settings = crate::config::Settings::resolve_on(
        crate::config::Platform::FreeBsd,
        crate::config::FileConfig::default(),
        crate::config::Overrides::default(),
    )
    .unwrap();
    let model = Shared::default();
    model.borrow_mut().driver.open(Device::App).unwrap();
    let mut t = open(&model).unwrap();
    let mut coord = Coordinator::new(settings.limits, Millis(0)).unwrap();
    coord.handle(Event::Ready, Millis(0));

    host(&model, VssOperation::FREEZE);
    advance(&model, Duration::from_secs(1));
    app_serves(&model, true);
    let (key, op) = one_request(&mut t);
    let start = Millis(1000);
    let actions = coord.handle(
        Event::HostRequest {
            request: RequestId(1),
            op,
        },
        start,
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Reply { .. })),
        "{actions:?}"
    );
    // The filesystem work hangs; time runs to the coordinator's next deadline.
    let mut now = start;
    let status = loop {
        let due = coord.next_deadline().expect("a deadline while working");
        advance(&model, Duration::from_millis(due.0 - now.0));
        now = due;
        if let Some(status) = coord.tick(now).iter().find_map(|a| match a {
            Action::Reply { status, .. } => Some(*status),
            _ => None,
        }) {
            break status;
        }
    };
    assert_eq!(status, Status::Fail);
    assert!(answers(&model).is_empty(), "the driver's timer fired first");
    t.reply(key, status).unwrap();
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::FREEZE,
            HvStatus::E_FAIL,
            AnswerReason::FailAck(Device::Daemon)
        )]
    );
    assert!(model.borrow().driver.now() < TIMEOUT_LIMIT);
}

#[test]
fn a_second_open_is_ebusy_and_the_first_keeps_serving() {
    let model = Shared::default();
    let mut t = open(&model).unwrap();
    let err = open(&model).unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(!err.requires_reopen());
    assert!(err.to_string().contains("/dev/hv_fsvss_dev"), "{err}");
    assert!(events(&model).contains(&EventKind::OpenRefused(Device::Daemon)));
    serves(&model, &mut t, VssOperation::HOT_BACKUP);
}

#[test]
fn once_we_are_gone_the_driver_answers_e_fail_and_a_reopen_serves_again() {
    let model = Shared::default();
    let t = open(&model).unwrap();
    drop(t);
    assert_eq!(
        host(&model, VssOperation::FREEZE),
        Disposition::Answered(HvStatus::E_FAIL)
    );
    assert_eq!(
        answers(&model),
        [answer(
            VssOperation::FREEZE,
            HvStatus::E_FAIL,
            AnswerReason::DaemonGone
        )]
    );
    let mut t = open(&model).unwrap();
    serves(&model, &mut t, VssOperation::FREEZE);
}

#[test]
fn a_read_we_do_not_know_is_acked_fail_and_the_next_request_is_served() {
    let model = Shared::default();
    let mut t = open(&model).unwrap();
    for (rewrite, op, status) in [
        (
            (|m: &mut HvVssOptMsg| m.opt = VssOpt(7)) as fn(&mut HvVssOptMsg),
            7,
            0,
        ),
        (|m: &mut HvVssOptMsg| m.opt = VssOpt(u32::MAX), u32::MAX, 0),
        (|m: &mut HvVssOptMsg| m.status = OptStatus(9), 2, 9),
    ] {
        model.borrow_mut().rewrite_next_read = Some(rewrite);
        let Disposition::Dispatched(msgid) = host(&model, VssOperation::FREEZE) else {
            panic!("not dispatched");
        };
        assert_eq!(
            t.recv().unwrap(),
            [Incoming::Refused {
                op,
                status: Some(status)
            }]
        );
        assert_eq!(t.pending.len(), 0);
        // Acked fail with the msgid: the host hears E_FAIL now, not after 15 s.
        assert!(events(&model).contains(&EventKind::Acked {
            device: Device::Daemon,
            msgid,
            status: OptStatus::FAIL,
        }));
        assert_eq!(
            answers(&model),
            [answer(
                VssOperation::FREEZE,
                HvStatus::E_FAIL,
                AnswerReason::FailAck(Device::Daemon)
            )]
        );
        assert_eq!(serves(&model, &mut t, VssOperation::THAW), HostOp::Thaw);
    }
}

#[test]
fn a_device_that_fails_after_the_open_requires_a_reopen() {
    let model = Shared::default();
    let mut t = open(&model).unwrap();
    host(&model, VssOperation::FREEZE);
    let (key, _) = one_request(&mut t);
    // The fd went bad under us (EBADF from the model).
    model.borrow_mut().driver.close(Device::Daemon).unwrap();
    let err = t.reply(key, Status::Ok).unwrap_err();
    assert!(err.requires_reopen(), "{err}");
    assert!(err.to_string().contains("IOCHVVSSWRITE"), "{err}");
    let err = t.recv().unwrap_err();
    assert!(err.requires_reopen(), "{err}");
}
