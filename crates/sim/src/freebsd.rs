//! A sans-IO model of FreeBSD's VSS driver (sys/dev/hyperv/utilities/hv_snapshot.c) as the
//! fs daemon (`/dev/hv_fsvss_dev`) and an application (`/dev/hv_appvss_dev`) see it: the
//! counterpart of [`crate::kernel`] (Linux's driver) for tests of a FreeBSD transport on
//! Linux. No sockets, no threads, no clock: the test calls the device operations and
//! advances time itself, and every step is recorded as an [`Event`].
//!
//! Kernel contract being modelled:
//!
//! - Opening a device registers its user; a second open while it is open gets `EBUSY`.
//!   Closing unregisters but leaves the queues alone: a reopening daemon can still read
//!   what was queued for it.
//! - The host's FREEZE, THAW and HOT_BACKUP become one request (opt FREEZE, THAW, CHECK)
//!   with a fresh msgid. One request at a time: a host request that arrives while any
//!   queue holds one is ignored (the host gets no answer). GET_DM_INFO is answered S_OK by
//!   the driver; other operations get no answer.
//! - Until a daemon has opened the device once, host requests stay in the VMBus ring
//!   (the driver does not process them); the daemon's first open processes them. Once a
//!   daemon has opened it and closed it again ("killed after launch"), every request is
//!   answered E_FAIL at once.
//! - Order: CHECK and FREEZE go to the app first (when one is registered at dispatch) and
//!   to the daemon after the app's success ack; THAW goes to the daemon first and to the
//!   app after the daemon's success ack (when one is registered then). A fail ack from the
//!   first answers the host E_FAIL and the second is not asked. An app's ack that arrives
//!   while no daemon is registered is consumed and forwarded nowhere; the request then
//!   ends by timeout.
//! - Each device has a notify queue (POLLIN while not empty) and an ack queue. READ moves
//!   the head of the notify queue to the ack queue and returns it with status 0; on an
//!   empty queue it returns status 1 with opt NONE and msgid 0 (the ioctl buffer is
//!   zeroed by FreeBSD before an out-only ioctl).
//! - WRITE looks the msgid up in that device's ack queue; not found (late, after the
//!   timeout, or never read) the ack is dropped, silently to the writer (the ioctl is
//!   in-only).
//! - One 15 s timer per request, armed when it is dispatched to its first recipient and
//!   not re-armed when it moves on: on expiry the request is removed from every queue and
//!   the host gets E_FAIL. Nothing is thawed by the driver.
//! - msgids here count up from 1 (the driver uses the dispatch time in ns; a daemon must
//!   only echo them).

use std::collections::VecDeque;
use std::time::Duration;

use hv_vss_protocol::freebsd::{HvVssOptMsg, OptStatus, VssOpt};
use hv_vss_protocol::{HvStatus, VssOperation};

/// The driver's `TIMEOUT_LIMIT`: from dispatch to the last ack.
pub const TIMEOUT_LIMIT: Duration = hv_vss_protocol::freebsd::DRIVER_ACK_TIMEOUT;

/// One of the driver's two character devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// `/dev/hv_fsvss_dev`: the filesystem daemon.
    Daemon,
    /// `/dev/hv_appvss_dev`: an application.
    App,
}

/// A device operation the model refuses, as the kernel's errno would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Open while the device is open (`EBUSY`).
    #[error("{0:?} device is already open (EBUSY)")]
    Busy(Device),
    /// An ioctl, poll or close without an open fd (`EBADF`).
    #[error("{0:?} device is not open (EBADF)")]
    NotOpen(Device),
}

/// What the driver did with one host request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Queued for its first recipient under this msgid.
    Dispatched(u64),
    /// Answered at once with this status.
    Answered(HvStatus),
    /// Left in the ring until a daemon first opens the device.
    HeldInRing,
    /// Dropped without an answer (a request in flight, or an operation the driver does not
    /// know).
    Ignored,
}

/// Why the host got the status it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerReason {
    /// Every recipient acked success.
    Acked,
    /// A recipient acked failure.
    FailAck(Device),
    /// No ack within [`TIMEOUT_LIMIT`].
    Timeout,
    /// The daemon was killed after launch.
    DaemonGone,
    /// GET_DM_INFO, answered by the driver.
    Local,
}

/// One answer to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostAnswer {
    /// The host's operation.
    pub op: VssOperation,
    /// S_OK or E_FAIL.
    pub status: HvStatus,
    /// Why.
    pub reason: AnswerReason,
}

/// One step, for tests to assert on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Model time.
    pub at: Duration,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A device was opened.
    Opened(Device),
    /// A second open was refused.
    OpenRefused(Device),
    /// A device was closed.
    Closed(Device),
    /// A request was queued for a device.
    Queued {
        /// The recipient.
        device: Device,
        /// The request.
        opt: VssOpt,
        /// Its msgid.
        msgid: u64,
    },
    /// A device read a request.
    Read {
        /// The reader.
        device: Device,
        /// The msgid read.
        msgid: u64,
    },
    /// A device read with its queue empty.
    EmptyRead(Device),
    /// An ack matched a request.
    Acked {
        /// The writer.
        device: Device,
        /// The msgid.
        msgid: u64,
        /// Its status.
        status: OptStatus,
    },
    /// An ack matched nothing and was dropped.
    AckDropped {
        /// The writer.
        device: Device,
        /// The msgid it named.
        msgid: u64,
    },
    /// A request timed out.
    TimedOut {
        /// Its msgid.
        msgid: u64,
    },
    /// The host got an answer.
    Answered(HostAnswer),
    /// A host request was ignored.
    Ignored(VssOperation),
}

#[derive(Debug, Default)]
struct DeviceQueues {
    open: bool,
    to_notify: VecDeque<u64>,
    to_ack: VecDeque<u64>,
}

impl DeviceQueues {
    fn remove(&mut self, msgid: u64) -> bool {
        let before = self.to_notify.len() + self.to_ack.len();
        self.to_notify.retain(|id| *id != msgid);
        self.to_ack.retain(|id| *id != msgid);
        before != self.to_notify.len() + self.to_ack.len()
    }

    fn is_idle(&self) -> bool {
        self.to_notify.is_empty() && self.to_ack.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
struct Request {
    msgid: u64,
    op: VssOperation,
    opt: VssOpt,
    deadline: Duration,
}

/// The model of `hv_snapshot.c`.
#[derive(Debug, Default)]
pub struct FreeBsdDriver {
    now: Duration,
    daemon: DeviceQueues,
    app: DeviceQueues,
    daemon_ever_opened: bool,
    request: Option<Request>,
    ring: VecDeque<VssOperation>,
    next_msgid: u64,
    answers: Vec<HostAnswer>,
    events: Vec<Event>,
}

impl FreeBsdDriver {
    /// A driver with no device open, at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Model time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Every step so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The host's answers since the last call.
    pub fn take_answers(&mut self) -> Vec<HostAnswer> {
        std::mem::take(&mut self.answers)
    }

    /// True while a request is queued or awaiting an ack somewhere.
    pub fn request_in_flight(&self) -> bool {
        self.request.is_some()
    }

    fn queues(&mut self, device: Device) -> &mut DeviceQueues {
        match device {
            Device::Daemon => &mut self.daemon,
            Device::App => &mut self.app,
        }
    }

    fn record(&mut self, kind: EventKind) {
        self.events.push(Event { at: self.now, kind });
    }

    fn answer(&mut self, op: VssOperation, status: HvStatus, reason: AnswerReason) {
        let answer = HostAnswer { op, status, reason };
        self.answers.push(answer);
        self.record(EventKind::Answered(answer));
    }

    fn finish(&mut self, success: bool, reason: AnswerReason) {
        if let Some(request) = self.request.take() {
            self.daemon.remove(request.msgid);
            self.app.remove(request.msgid);
            let status = if success {
                HvStatus::S_OK
            } else {
                HvStatus::E_FAIL
            };
            self.answer(request.op, status, reason);
        }
    }

    fn notify(&mut self, device: Device, request: Request) {
        self.queues(device).to_notify.push_back(request.msgid);
        self.record(EventKind::Queued {
            device,
            opt: request.opt,
            msgid: request.msgid,
        });
    }

    fn check_open(&self, device: Device) -> Result<(), DeviceError> {
        let open = match device {
            Device::Daemon => self.daemon.open,
            Device::App => self.app.open,
        };
        if open {
            Ok(())
        } else {
            Err(DeviceError::NotOpen(device))
        }
    }

    /// `open(2)` of a device: registration.
    pub fn open(&mut self, device: Device) -> Result<(), DeviceError> {
        if self.queues(device).open {
            self.record(EventKind::OpenRefused(device));
            return Err(DeviceError::Busy(device));
        }
        self.queues(device).open = true;
        self.record(EventKind::Opened(device));
        if device == Device::Daemon {
            self.daemon_ever_opened = true;
            // hv_vss_dev_open runs the channel callback: what waited in the ring is read now.
            while let Some(op) = self.ring.pop_front() {
                self.host_request(op);
            }
        }
        Ok(())
    }

    /// `close(2)` of a device: unregistration; the queues are left as they are.
    pub fn close(&mut self, device: Device) -> Result<(), DeviceError> {
        self.check_open(device)?;
        self.queues(device).open = false;
        self.record(EventKind::Closed(device));
        Ok(())
    }

    /// A request from the host.
    pub fn host_request(&mut self, op: VssOperation) -> Disposition {
        if !self.daemon_ever_opened {
            self.ring.push_back(op);
            return Disposition::HeldInRing;
        }
        if !self.daemon.open {
            self.answer(op, HvStatus::E_FAIL, AnswerReason::DaemonGone);
            return Disposition::Answered(HvStatus::E_FAIL);
        }
        let opt = match op {
            VssOperation::FREEZE => VssOpt::FREEZE,
            VssOperation::THAW => VssOpt::THAW,
            VssOperation::HOT_BACKUP => VssOpt::CHECK,
            VssOperation::GET_DM_INFO => {
                self.answer(op, HvStatus::S_OK, AnswerReason::Local);
                return Disposition::Answered(HvStatus::S_OK);
            }
            _ => {
                self.record(EventKind::Ignored(op));
                return Disposition::Ignored;
            }
        };
        if self.request.is_some() || !self.daemon.is_idle() || !self.app.is_idle() {
            self.record(EventKind::Ignored(op));
            return Disposition::Ignored;
        }
        self.next_msgid += 1;
        let request = Request {
            msgid: self.next_msgid,
            op,
            opt,
            deadline: self.now + TIMEOUT_LIMIT,
        };
        self.request = Some(request);
        let first = if opt != VssOpt::THAW && self.app.open {
            Device::App
        } else {
            Device::Daemon
        };
        self.notify(first, request);
        Disposition::Dispatched(request.msgid)
    }

    /// `poll(2)` for POLLIN: true when the device's notify queue is not empty.
    pub fn poll_in(&self, device: Device) -> Result<bool, DeviceError> {
        self.check_open(device)?;
        Ok(match device {
            Device::Daemon => !self.daemon.to_notify.is_empty(),
            Device::App => !self.app.to_notify.is_empty(),
        })
    }

    /// `ioctl(IOCHVVSSREAD)`.
    pub fn read(&mut self, device: Device) -> Result<HvVssOptMsg, DeviceError> {
        self.check_open(device)?;
        let Some(msgid) = self.queues(device).to_notify.pop_front() else {
            self.record(EventKind::EmptyRead(device));
            return Ok(HvVssOptMsg::empty_read());
        };
        self.queues(device).to_ack.push_back(msgid);
        self.record(EventKind::Read { device, msgid });
        let opt = self
            .request
            .filter(|request| request.msgid == msgid)
            .map_or(VssOpt::NONE, |request| request.opt);
        Ok(HvVssOptMsg::new(opt, OptStatus::SUCCESS, msgid))
    }

    /// `ioctl(IOCHVVSSWRITE)`: the ack. Returns whether it matched a request (the writer
    /// cannot tell; tests can).
    pub fn write(&mut self, device: Device, ack: &HvVssOptMsg) -> Result<bool, DeviceError> {
        self.check_open(device)?;
        let queue = &mut self.queues(device).to_ack;
        let Some(index) = queue.iter().position(|id| *id == ack.msgid) else {
            self.record(EventKind::AckDropped {
                device,
                msgid: ack.msgid,
            });
            return Ok(false);
        };
        queue.remove(index);
        self.record(EventKind::Acked {
            device,
            msgid: ack.msgid,
            status: ack.status,
        });
        let Some(request) = self.request else {
            return Ok(true);
        };
        let success = ack.status == OptStatus::SUCCESS;
        match (device, request.opt) {
            (Device::App, VssOpt::CHECK | VssOpt::FREEZE) => {
                if !self.daemon.open {
                    // hv_vss_app_acked: "vss daemon was killed"; the timer still runs.
                } else if success {
                    self.notify(Device::Daemon, request);
                } else {
                    self.finish(false, AnswerReason::FailAck(Device::App));
                }
            }
            (Device::Daemon, VssOpt::THAW) if self.app.open && success => {
                self.notify(Device::App, request);
            }
            (Device::App, _) if !self.daemon.open => {}
            _ => {
                let reason = if success {
                    AnswerReason::Acked
                } else {
                    AnswerReason::FailAck(device)
                };
                self.finish(success, reason);
            }
        }
        Ok(true)
    }

    /// Moves model time on by `by`, firing the timeout if it falls due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        if let Some(request) = self.request {
            if self.now >= request.deadline {
                self.record(EventKind::TimedOut {
                    msgid: request.msgid,
                });
                self.finish(false, AnswerReason::Timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests;
