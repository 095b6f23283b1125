//! Guest and simulated host in two processes over the shared-memory rings.
//!
//! The test re-executes its own binary as the host (the `host_process` test, ignored unless
//! started with `HV_VSS_RING_CHILD` set), hands it the memfd, interrupt pipe and eventfd
//! over a SOCK_SEQPACKET socket given as its stdin, then streams thousands of requests of random
//! sizes (0..=7000 bytes) through 32 KiB rings with up to 8 in flight, so packets wrap and
//! the TX ring fills. Both sides check every byte: the host checks each request against what
//! its `trans_id` says it must be and answers with a different derived payload, which the
//! guest checks in turn.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use hv_vss_ring::RingError;
use hv_vss_vmbus::shm::{ShmChannel, ShmRings};
use hv_vss_vmbus::uio::{ChannelError, VmbusChannel, Wake};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

const CHILD_ENV: &str = "HV_VSS_RING_CHILD";
const RING_LEN: usize = 32 * 1024;
const MESSAGES: u64 = 4000;
/// Requests in flight: enough that 0..=7000-byte requests sometimes fill the TX ring, few
/// enough that the replies (at most 3000 bytes) always fit the RX ring.
const WINDOW: u64 = 8;
const SHUTDOWN: u64 = u64::MAX;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(20));

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a cheap, well-spread function of the id.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The request the guest sends with `id`; its size also depends on `id`.
fn request(id: u64) -> Vec<u8> {
    let seed = mix(id);
    let len = (seed % 7001) as usize;
    (0..len)
        .map(|i| (seed >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect()
}

/// The reply the host sends to request `id`: a different size and content.
fn reply(id: u64) -> Vec<u8> {
    let seed = mix(id ^ 0xdead_beef);
    let len = (seed % 3001) as usize;
    (0..len)
        .map(|i| (seed >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(3))
        .collect()
}

/// Packets carry no unpadded length (VMBus pads to 8), so the check is: the payload starts
/// with the expected bytes and the rest is < 8 bytes of zero padding.
fn check(payload: &[u8], expected: &[u8], what: &str, id: u64) {
    assert!(
        payload.len() >= expected.len() && payload.len() - expected.len() < 8,
        "{what} {id}: length"
    );
    assert!(
        payload[..expected.len()] == expected[..],
        "{what} {id}: bytes differ"
    );
    assert!(
        payload[expected.len()..].iter().all(|&b| b == 0),
        "{what} {id}: padding"
    );
}

fn spawn_host(spin_us: u64) -> (std::process::Child, OwnedFd) {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "host_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spin_us.to_string())
        .stdin(Stdio::from(theirs))
        .spawn()
        .unwrap();
    (child, ours)
}

fn run_guest(spin_us: u64) {
    let (mut child, sock) = spawn_host(spin_us);
    let rings = ShmRings::create(RING_LEN).unwrap();
    rings.send_over(&sock).unwrap();
    let mut guest = rings.guest().unwrap();
    guest.set_spin(Duration::from_micros(spin_us));

    let (mut next_send, mut next_reply, mut full_seen) = (0u64, 0u64, 0u64);
    while next_reply < MESSAGES {
        while next_send < MESSAGES && next_send - next_reply < WINDOW {
            match guest.send(next_send, &request(next_send)) {
                Ok(()) => next_send += 1,
                Err(ChannelError::Ring(RingError::Full { .. })) => {
                    full_seen += 1;
                    break;
                }
                Err(e) => panic!("send {next_send}: {e}"),
            }
        }
        let before = next_reply;
        while let Some(p) = guest.recv().unwrap() {
            assert_eq!(p.trans_id(), next_reply, "replies in order");
            check(p.payload(), &reply(next_reply), "reply", next_reply);
            next_reply += 1;
        }
        if next_reply > before {
            continue; // the window opened: send more before waiting
        }
        if guest.wait(TIMEOUT).unwrap() == Wake::TimedOut {
            let _ = child.kill();
            panic!("no reply to {next_reply} within {TIMEOUT:?}");
        }
    }
    guest.send(SHUTDOWN, b"").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "host process failed: {status}");
    let tx_wraps = guest.writer().expect("mapped").write_pos();
    eprintln!("guest: {MESSAGES} round trips, {full_seen} full rings, tx write_pos {tx_wraps:#x}");
    assert!(full_seen > 0, "the TX ring filled up at least once");
}

/// The host side, run in the child process.
fn run_host(spin_us: u64) {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let mut host: ShmChannel = ShmRings::recv_from(&stdin).unwrap().host().unwrap();
    host.set_spin(Duration::from_micros(spin_us));
    let mut expected = 0u64;
    loop {
        assert_eq!(
            host.wait(TIMEOUT).unwrap(),
            Wake::Ready,
            "guest went silent at {expected}"
        );
        let mut ids = Vec::new();
        while let Some(p) = host.recv().unwrap() {
            let id = p.trans_id();
            if id == SHUTDOWN {
                assert_eq!(expected, MESSAGES);
                return;
            }
            assert_eq!(id, expected, "requests in order");
            check(p.payload(), &request(id), "request", id);
            ids.push(id);
            expected += 1;
        }
        for id in ids {
            // At most WINDOW requests are in flight and WINDOW replies fit the RX ring, so
            // this never meets a full ring.
            host.send(id, &reply(id)).unwrap();
        }
    }
}

#[test]
fn two_processes_exchange_packets_blocking_on_eventfds() {
    run_guest(0);
}

#[test]
fn two_processes_exchange_packets_with_spinning() {
    run_guest(50);
}

#[test]
#[ignore = "the host half of the two-process tests; started by them as a child process"]
fn host_process() {
    if let Ok(spin) = std::env::var(CHILD_ENV) {
        run_host(spin.parse().unwrap());
    }
}

#[test]
fn request_and_reply_generators_cover_wrapping_sizes() {
    // Sizes spread over the whole range, so packets regularly straddle the wrap point of a
    // 32 KiB ring.
    let sizes: Vec<usize> = (0..MESSAGES).map(|id| request(id).len()).collect();
    assert!(sizes.iter().any(|&s| s < 100) && sizes.iter().any(|&s| s > 6900));
    let total: usize = sizes.iter().map(|s| s + 32).sum();
    assert!(total > 100 * RING_LEN, "the TX ring wraps many times");
}
