//! The IC endpoint against hand-made host packets on an in-process shared-memory pair:
//! byte-exact replies (worked examples 11.2, 11.5, 11.6), the exactly-once reply token,
//! R2 (NEGOTIATE mid-transaction), R3, R27, a full TX ring, and rescind.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hv_vss_protocol::negotiate::NegotiateFailure;
use hv_vss_protocol::negotiate::build_offer;
use hv_vss_protocol::vss::{CoordinatorOp, build_request};
use hv_vss_protocol::{HvStatus, Version, VssOperation};
use hv_vss_ring::Packet;
use hv_vss_sys::uio::map_errno;
use hv_vss_vmbus::ic_endpoint::{
    DropReason, EndpointConfig, EndpointError, IcEndpoint, IcEvent, IcNotice, Negotiation,
    PendingRequest,
};
use hv_vss_vmbus::shm::{ShmChannel, ShmRings};
use hv_vss_vmbus::uio::{ChannelError, VmbusChannel, Wake};
use rustix::io::Errno;

const V1: Version = Version::new(1, 0);
const V3: Version = Version::new(3, 0);
const V4: Version = Version::new(4, 0);
const V5: Version = Version::new(5, 0);

/// Worked example 11.2: the guest's reply to the 11.1 offer.
const REPLY_11_2: [u8; 48] = [
    0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
];
/// Worked example 11.5: FREEZE success reply.
const FREEZE_OK_11_5: [u8; 40] = [
    0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x05, 0x00,
    0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];
/// Worked example 11.6: HOT_BACKUP reply with flags 5.
const HOT_BACKUP_OK_11_6: [u8; 40] = [
    0x01, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x05, 0x00, 0x05, 0x00,
    0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
];
const E_FAIL_BYTES: [u8; 4] = [0x05, 0x40, 0x00, 0x80];

fn pair_with(ring_len: usize) -> (IcEndpoint<ShmChannel>, ShmChannel) {
    let rings = ShmRings::create(ring_len).unwrap();
    let host = rings.try_clone().unwrap().host().unwrap();
    (IcEndpoint::new(rings.guest().unwrap()), host)
}

fn pair() -> (IcEndpoint<ShmChannel>, ShmChannel) {
    pair_with(64 * 1024)
}

fn replies(host: &mut ShmChannel) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(p) = host.recv().unwrap() {
        assert_eq!(p.descriptor.packet_type.get(), 6, "in-band");
        assert_eq!(p.descriptor.flags.get(), 0, "VMBus flags 0");
        out.push((p.trans_id(), p.payload().to_vec()));
    }
    out
}

fn requests(events: Vec<IcEvent>) -> Vec<PendingRequest> {
    events
        .into_iter()
        .filter_map(|e| match e {
            IcEvent::Request(r) => Some(r),
            IcEvent::BackupComplete { .. } => None,
        })
        .collect()
}

#[test]
fn negotiation_reply_is_worked_example_11_2() {
    let (mut ep, mut host) = pair();
    assert_eq!(ep.negotiation(), Negotiation::Awaiting);
    host.send(0x2a, &build_offer(&[V1, V3], &[V5]).unwrap())
        .unwrap();
    assert!(ep.service().unwrap().is_empty());
    assert_eq!(replies(&mut host), vec![(0x2a, REPLY_11_2.to_vec())]);
    assert_eq!(
        ep.negotiation(),
        Negotiation::Agreed {
            framework: V3,
            message: V5
        }
    );
    assert_eq!(
        ep.take_notices(),
        vec![IcNotice::Negotiated {
            framework: V3,
            message: V5
        }]
    );
}

#[test]
fn coordinator_replies_are_worked_examples_11_5_and_11_6() {
    let (mut ep, mut host) = pair();
    host.send(
        10,
        &build_request(VssOperation::HOT_BACKUP, 0, &[]).unwrap(),
    )
    .unwrap();
    host.send(11, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
        .unwrap();
    let mut reqs = requests(ep.service().unwrap());
    assert_eq!(reqs.len(), 2);
    let freeze = reqs.pop().unwrap();
    let check = reqs.pop().unwrap();
    assert_eq!((check.op(), check.trans_id()), (CoordinatorOp::Check, 10));
    assert_eq!(
        (freeze.op(), freeze.trans_id()),
        (CoordinatorOp::Freeze, 11)
    );
    assert_eq!(ep.pending_requests(), 2);
    ep.reply(check, HvStatus::S_OK).unwrap();
    ep.reply(freeze, HvStatus::S_OK).unwrap();
    assert_eq!(
        replies(&mut host),
        vec![
            (10, HOT_BACKUP_OK_11_6.to_vec()),
            (11, FREEZE_OK_11_5.to_vec())
        ]
    );
    assert_eq!(ep.pending_requests(), 0);
}

#[test]
fn vetoed_hot_backup_keeps_flags_5_and_any_failure_status_goes_out_as_e_fail() {
    let (mut ep, mut host) = pair();
    host.send(1, &build_request(VssOperation::HOT_BACKUP, 0, &[]).unwrap())
        .unwrap();
    let req = requests(ep.service().unwrap()).pop().unwrap();
    // R8: a status other than S_OK is sent as HV_E_FAIL.
    ep.reply(req, HvStatus::ERROR_DISK_FULL).unwrap();
    let mut veto = HOT_BACKUP_OK_11_6;
    veto[0x14..0x18].copy_from_slice(&E_FAIL_BYTES);
    assert_eq!(replies(&mut host), vec![(1, veto.to_vec())]);
}

#[test]
fn negotiate_is_answered_mid_transaction_and_thaw_during_freeze_is_delivered() {
    let (mut ep, mut host) = pair();
    host.send(1, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
        .unwrap();
    let freeze = requests(ep.service().unwrap()).pop().unwrap();
    // The host renegotiates and sends THAW while FREEZE is still pending (R2, R26).
    host.send(2, &build_offer(&[V3], &[V5]).unwrap()).unwrap();
    host.send(3, &build_request(VssOperation::THAW, 0, &[]).unwrap())
        .unwrap();
    let thaw = requests(ep.service().unwrap()).pop().unwrap();
    assert_eq!(thaw.op(), CoordinatorOp::Thaw);
    let got = replies(&mut host);
    assert_eq!(got.len(), 1, "only NEGOTIATE answered so far");
    assert_eq!(got[0].0, 2);
    // The coordinator's order: E_FAIL to the FREEZE, then the THAW.
    ep.reply(freeze, HvStatus::E_FAIL).unwrap();
    ep.reply(thaw, HvStatus::S_OK).unwrap();
    let got = replies(&mut host);
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(&got[0].1[20..24], &E_FAIL_BYTES);
    assert_eq!(&got[1].1[20..24], &[0; 4]);
}

/// R3: every NEGOTIATE is answered, failed, malformed and repeated ones included: counts 0,
/// icmsgsize 16, E_FAIL. A good offer after failures still agrees. Only the notices are
/// rate-limited.
#[test]
fn every_negotiate_is_answered_failed_malformed_and_repeated() {
    let config = EndpointConfig {
        notice_burst: 2,
        ..EndpointConfig::default()
    };
    let rings = ShmRings::create(64 * 1024).unwrap();
    let mut host = rings.try_clone().unwrap().host().unwrap();
    let mut ep = IcEndpoint::with_config(rings.guest().unwrap(), config);
    let vss_4 = build_offer(&[V3], &[V4]).unwrap();
    let good = build_offer(&[V1, V3], &[V5]).unwrap();
    let mut count_0 = good.clone();
    count_0[0x1c] = 0;
    let mut count_101 = good.clone();
    count_101[0x1e] = 101;
    let mut overrun = good.clone();
    overrun[0x1e] = 9;
    let mut malformed = vec![vss_4.clone(), count_0, count_101, overrun];
    // Repeats of the failing offer.
    malformed.extend(std::iter::repeat_n(vss_4.clone(), 5));
    for (id, offer) in malformed.iter().enumerate() {
        host.send(id as u64, offer).unwrap();
    }
    ep.service().unwrap();
    let got = replies(&mut host);
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..malformed.len() as u64).collect::<Vec<_>>(),
        "one reply to each NEGOTIATE, in order"
    );
    for ((_, reply), offer) in got.iter().zip(&malformed) {
        assert_eq!(reply.len(), offer.len().div_ceil(8) * 8);
        assert_eq!(&reply[0x1c..0x20], &[0; 4], "counts 0");
        assert_eq!(&reply[0x14..0x18], &E_FAIL_BYTES);
        assert_eq!(&reply[0x12..0x14], &[16, 0], "icmsgsize 16");
        assert_eq!(reply[0x19], 0x05);
    }
    assert_eq!(ep.negotiation(), Negotiation::Failed);
    // A good offer after all that agrees.
    host.send(100, &good).unwrap();
    ep.service().unwrap();
    let got = replies(&mut host);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, REPLY_11_2);
    assert!(matches!(ep.negotiation(), Negotiation::Agreed { .. }));
    // Only the log lines are limited: 2 of 10 negotiation notices queued, the rest counted.
    let notices = ep.take_notices();
    let failed = notices
        .iter()
        .filter(|n| matches!(n, IcNotice::NegotiationFailed { .. }))
        .count();
    assert_eq!(failed, 2, "{notices:?}");
    assert!(matches!(
        &notices[1],
        IcNotice::NegotiationFailed {
            failure: NegotiateFailure::Malformed(_),
            ..
        }
    ));
    assert_eq!(ep.suppressed_notices(), 8);
    assert_eq!(ep.stats().answered_locally, 10);
}

/// A NEGOTIATE too short to hold the counts has nowhere to put them: no reply.
#[test]
fn a_negotiate_without_room_for_the_counts_gets_no_reply() {
    let (mut ep, mut host) = pair();
    let good = build_offer(&[V3], &[V5]).unwrap();
    let mut short = good[..32].to_vec();
    short[18] = 4;
    host.send(1, &short).unwrap();
    ep.service().unwrap();
    assert!(replies(&mut host).is_empty());
    assert!(matches!(
        ep.take_notices().as_slice(),
        [IcNotice::Dropped {
            reason: DropReason::BadNegotiate(_),
            ..
        }]
    ));
}

#[test]
fn requests_before_the_caller_is_ready_can_be_refused() {
    let (mut ep, mut host) = pair();
    host.send(9, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
        .unwrap();
    let req = requests(ep.service().unwrap()).pop().unwrap();
    ep.refuse(req).unwrap();
    let got = replies(&mut host);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].1[20..24], &E_FAIL_BYTES);
}

#[test]
fn a_token_replied_on_another_endpoint_is_refused_and_answered_by_its_own() {
    let (mut a, mut host_a) = pair();
    let (mut b, mut host_b) = pair();
    host_a
        .send(5, &build_request(VssOperation::THAW, 0, &[]).unwrap())
        .unwrap();
    let req = requests(a.service().unwrap()).pop().unwrap();
    assert!(matches!(
        b.reply(req, HvStatus::S_OK),
        Err(EndpointError::ForeignRequest { trans_id: 5 })
    ));
    b.flush().expect("b keeps working");
    assert!(replies(&mut host_b).is_empty());
    a.flush().unwrap();
    let got = replies(&mut host_a);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].1[20..24], &E_FAIL_BYTES);
}

#[test]
fn replies_wait_in_order_when_the_tx_ring_is_full() {
    // A small ring the host does not drain: replies pile up in the outbox, in order.
    let (mut ep, mut host) = pair_with(2 * hv_vss_sys::mem::page_size());
    let lun = vec![0xab; 1500];
    let mut sent = Vec::new();
    let mut tokens = Vec::new();
    for id in 0..6u64 {
        host.send(id, &build_request(VssOperation::FREEZE, 0, &lun).unwrap())
            .unwrap();
        tokens.extend(requests(ep.service().unwrap()));
        sent.push(id);
    }
    for t in tokens {
        ep.reply(t, HvStatus::S_OK).unwrap();
    }
    assert!(
        ep.unsent_replies() > 0,
        "the 4 KiB ring cannot hold 6 replies"
    );
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(replies(&mut host).into_iter().map(|r| r.0));
        ep.flush().unwrap();
        if ep.unsent_replies() == 0 {
            break;
        }
    }
    got.extend(replies(&mut host).into_iter().map(|r| r.0));
    assert_eq!(got, sent, "every reply once, in order");
}

#[test]
fn a_host_that_never_reads_cannot_grow_the_outbox_past_its_bound() {
    // 1,000 requests answered into a 8 KiB ring the host never drains: the outbox stays
    // at its bound, and every reply dropped from it is counted.
    let (mut ep, mut host) = pair_with(2 * hv_vss_sys::mem::page_size());
    let max = EndpointConfig::default().max_unsent_replies;
    for id in 0..1000u64 {
        host.send(id, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
            .unwrap();
        for t in requests(ep.service().unwrap()) {
            ep.reply(t, HvStatus::S_OK).unwrap();
        }
        assert!(ep.unsent_replies() <= max, "{} unsent", ep.unsent_replies());
    }
    assert_eq!(ep.unsent_replies(), max);
    let on_ring = replies(&mut host).len() as u64;
    let dropped = ep.stats().replies_dropped;
    assert!(dropped > 0);
    assert_eq!(
        on_ring + max as u64 + dropped,
        1000,
        "each reply sent, queued or counted"
    );
    let notices = ep.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, IcNotice::ReplyDropped { trans_id } if *trans_id == on_ring)),
        "the first reply dropped is the oldest unsent one: {notices:?}"
    );
}

#[test]
fn oversize_packet_is_a_final_error_not_truncated() {
    let (mut ep, mut host) = pair();
    host.send(1, &vec![0u8; 17 * 1024]).unwrap();
    match ep.service() {
        Err(EndpointError::Oversize { len, buffer_len }) => {
            assert!(len > buffer_len && buffer_len >= 16 * 1024);
        }
        other => panic!("expected Oversize, got {other:?}"),
    }
    assert!(matches!(ep.service(), Err(EndpointError::Stopped(_))));
}

/// A channel that fails the way `/dev/uioN` does after a rescind: every call with `EIO`
/// once `rescinded` is set, or, with `einval_on_signal`, the `write(1)` that follows a
/// send with `EINVAL` (wire §3.2), classified by the same code `UioDevice` uses.
struct Rescindable {
    inner: ShmChannel,
    rescinded: Arc<AtomicBool>,
    einval_on_signal: bool,
}

impl Rescindable {
    fn new(inner: ShmChannel) -> Self {
        Self {
            inner,
            rescinded: Arc::default(),
            einval_on_signal: false,
        }
    }

    fn check(&self) -> Result<(), ChannelError> {
        if self.rescinded.load(Ordering::SeqCst) {
            return Err(map_errno(Errno::IO, "read", Path::new("/dev/uio3")).into());
        }
        Ok(())
    }
}

impl VmbusChannel for Rescindable {
    fn send(&mut self, trans_id: u64, payload: &[u8]) -> Result<(), ChannelError> {
        self.check()?;
        self.inner.send(trans_id, payload)?;
        if self.einval_on_signal {
            return Err(map_errno(Errno::INVAL, "write", Path::new("/dev/uio3")).into());
        }
        Ok(())
    }
    fn recv(&mut self) -> Result<Option<Packet<'_>>, ChannelError> {
        self.check()?;
        self.inner.recv()
    }
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake, ChannelError> {
        self.check()?;
        self.inner.wait(timeout)
    }
    fn mask(&mut self) -> Result<(), ChannelError> {
        self.inner.mask()
    }
    fn unmask(&mut self) -> Result<bool, ChannelError> {
        self.inner.unmask()
    }
    fn set_spin(&mut self, spin: Duration) {
        self.inner.set_spin(spin)
    }
    fn signal_fd(&self) -> BorrowedFd<'_> {
        self.inner.signal_fd()
    }
    fn ack_signals(&mut self) -> Result<(), ChannelError> {
        self.check()?;
        self.inner.ack_signals()
    }
    fn check_alive(&mut self) -> Result<(), ChannelError> {
        self.check()?;
        self.inner.check_alive()
    }
    fn unmap(&mut self) {
        self.inner.unmap()
    }
    fn is_mapped(&self) -> bool {
        self.inner.is_mapped()
    }
}

#[test]
fn eio_is_rescinded_and_the_endpoint_stops() {
    let rings = ShmRings::create(64 * 1024).unwrap();
    let mut host = rings.try_clone().unwrap().host().unwrap();
    let channel = Rescindable::new(rings.guest().unwrap());
    let rescinded = channel.rescinded.clone();
    let mut ep = IcEndpoint::new(channel);
    host.send(1, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
        .unwrap();
    let req = requests(ep.service().unwrap()).pop().unwrap();
    // The device goes away while the FREEZE is pending: the reply cannot be sent.
    rescinded.store(true, Ordering::SeqCst);
    assert!(matches!(
        ep.reply(req, HvStatus::S_OK),
        Err(EndpointError::Rescinded)
    ));
    assert!(matches!(ep.service(), Err(EndpointError::Stopped(_))));
    assert!(matches!(
        ep.wait(Some(Duration::ZERO)),
        Err(EndpointError::Stopped(_))
    ));
    assert!(replies(&mut host).is_empty());
    assert!(!ep.channel().inner.is_mapped(), "unmapped on the rescind");
}

/// R15: `EINVAL` from the signalling `write(1)` in the middle of a reply is the rescind:
/// the endpoint stops, unmaps, and writes nothing more (the owed reply of a dropped token
/// stays unsent).
#[test]
fn einval_mid_reply_is_a_rescind_and_nothing_more_is_written() {
    let rings = ShmRings::create(64 * 1024).unwrap();
    let mut host = rings.try_clone().unwrap().host().unwrap();
    let mut ep = IcEndpoint::new(Rescindable::new(rings.guest().unwrap()));
    for id in [1, 2] {
        host.send(id, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
            .unwrap();
    }
    let mut reqs = requests(ep.service().unwrap());
    let second = reqs.pop().unwrap();
    let first = reqs.pop().unwrap();
    // The device is rescinded between the reply's ring write and its signal.
    ep.channel_mut().einval_on_signal = true;
    assert!(matches!(
        ep.reply(first, HvStatus::S_OK),
        Err(EndpointError::Rescinded)
    ));
    assert!(!ep.channel().inner.is_mapped(), "unmapped at once");
    drop(second);
    assert!(matches!(ep.flush(), Err(EndpointError::Stopped(_))));
    let got = replies(&mut host);
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1],
        "only the reply written before the EINVAL"
    );
}
