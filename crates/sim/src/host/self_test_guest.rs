//! A guest for **transport self-tests**: an [`IcEndpoint`] whose HOT_BACKUP, FREEZE
//! and THAW are answered by a fixed policy. It freezes nothing and involves no
//! coordinator; it shows that bytes, wake-ups and reply framing work end to end.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use hv_vss_protocol::HvStatus;
use hv_vss_protocol::vss::CoordinatorOp;
use hv_vss_vmbus::ic_endpoint::{EndpointError, IcEndpoint, IcEvent, IcNotice};
use hv_vss_vmbus::uio::VmbusChannel;
use rustix::event::{PollFd, PollFlags, Timespec};

/// The fixed answers: true = S_OK, false = HV_E_FAIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPolicy {
    /// Answer to HOT_BACKUP.
    pub check: bool,
    /// Answer to FREEZE.
    pub freeze: bool,
    /// Answer to THAW.
    pub thaw: bool,
}

impl FixedPolicy {
    /// S_OK to everything.
    pub const ALWAYS_OK: Self = Self {
        check: true,
        freeze: true,
        thaw: true,
    };

    fn answer(&self, op: CoordinatorOp) -> HvStatus {
        HvStatus::from_success(match op {
            CoordinatorOp::Check => self.check,
            CoordinatorOp::Freeze => self.freeze,
            CoordinatorOp::Thaw => self.thaw,
        })
    }
}

/// Why [`serve`] ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServeEnd {
    /// The stop fd fired (or, for [`serve_for`], the time ran out).
    #[default]
    Stopped,
    /// The host went away: its interrupt fd closed, which the endpoint reports as a
    /// rescind.
    HostGone,
}

/// What the self-test guest saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfTestSummary {
    /// Why serving ended.
    pub ended_by: ServeEnd,
    /// Coordinator requests answered by the policy.
    pub requests: u64,
    /// BU_COMPLETE notices.
    pub backup_completes: u64,
    /// Notices from the endpoint, in order.
    pub notices: Vec<IcNotice>,
}

/// Serves until `stop` (e.g. the hand-over socket) polls readable or hangs up, the host
/// goes away, or the endpoint fails. Each coordinator request is answered at once by
/// `policy`. The host going away closes its interrupt fd, which the endpoint reports as
/// a rescind: for this guest, whose only host is the simulator, that is a normal end
/// ([`ServeEnd::HostGone`]), and nothing is written into the rings afterwards.
pub fn serve<C: VmbusChannel>(
    endpoint: &mut IcEndpoint<C>,
    policy: FixedPolicy,
    stop: BorrowedFd<'_>,
) -> Result<SelfTestSummary, EndpointError> {
    let mut summary = SelfTestSummary::default();
    match serve_until_stopped(endpoint, policy, stop, &mut summary) {
        Ok(()) => {}
        Err(EndpointError::Rescinded) => {
            summary.ended_by = ServeEnd::HostGone;
            summary.notices.extend(endpoint.take_notices());
        }
        Err(e) => return Err(e),
    }
    Ok(summary)
}

fn answer_all<C: VmbusChannel>(
    endpoint: &mut IcEndpoint<C>,
    policy: FixedPolicy,
    summary: &mut SelfTestSummary,
) -> Result<(), EndpointError> {
    for event in endpoint.service()? {
        match event {
            IcEvent::Request(req) => {
                let status = policy.answer(req.op());
                endpoint.reply(req, status)?;
                summary.requests += 1;
            }
            IcEvent::BackupComplete { .. } => summary.backup_completes += 1,
        }
    }
    summary.notices.extend(endpoint.take_notices());
    Ok(())
}

fn serve_until_stopped<C: VmbusChannel>(
    endpoint: &mut IcEndpoint<C>,
    policy: FixedPolicy,
    stop: BorrowedFd<'_>,
    summary: &mut SelfTestSummary,
) -> Result<(), EndpointError> {
    loop {
        answer_all(endpoint, policy, summary)?;
        let timeout = (endpoint.unsent_replies() > 0).then_some(Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        });
        let mut fds = [
            PollFd::from_borrowed_fd(endpoint.poll_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(EndpointError::Channel(
                    hv_vss_vmbus::uio::ChannelError::Io {
                        op: "poll",
                        source: e.into(),
                    },
                ));
            }
        }
        if !fds[1].revents().is_empty() {
            // Answer whatever came with the hang-up, then stop.
            return answer_all(endpoint, policy, summary);
        }
    }
}

/// Serves for at most `for_at_most` with no stop fd (in-process tests).
pub fn serve_for<C: VmbusChannel>(
    endpoint: &mut IcEndpoint<C>,
    policy: FixedPolicy,
    for_at_most: Duration,
) -> Result<SelfTestSummary, EndpointError> {
    let end = std::time::Instant::now() + for_at_most;
    let mut summary = SelfTestSummary::default();
    loop {
        answer_all(endpoint, policy, &mut summary)?;
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(summary);
        }
        endpoint.wait(Some(left.min(Duration::from_millis(50))))?;
    }
}
