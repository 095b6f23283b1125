//! Request/response round trips guest <-> host across two processes: the shared-memory VMBus
//! ring (blocking on its wake-up fds, and with a bounded spin before blocking) against a Unix
//! SOCK_SEQPACKET socket carrying the same bytes, measured in the same run.
//!
//! Run: `cargo bench -p hv-vss-vmbus --bench ring_roundtrip` (prints a Markdown table).
//! `HV_VSS_BENCH_ROUNDS` sets the number of timed round trips per case (default 20000).
//!
//! The benchmark binary re-executes itself as the host (env `HV_VSS_BENCH_CHILD`), with a
//! SOCK_SEQPACKET socket as its stdin: the ring cases hand the memfd, the interrupt pipe and
//! the eventfd over it, the socket case echoes over it.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hv_vss_vmbus::shm::ShmRings;
use hv_vss_vmbus::uio::{VmbusChannel, Wake};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, socketpair};

const CHILD_ENV: &str = "HV_VSS_BENCH_CHILD";
const RING_LEN: usize = 256 * 1024;
const SHUTDOWN: u64 = u64::MAX;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
/// Payload sizes: a minimal FREEZE (wire §11.4, 40 bytes) and a FREEZE with the largest
/// body (28 header bytes + 12,500 body bytes, OpenVMM's `Message2Ex`, wire §6.3).
const SIZES: [usize; 2] = [40, 28 + 12_500];
/// Spin budget of the spinning ring case.
const SPIN: Duration = Duration::from_micros(50);

#[derive(Clone, Copy, Debug)]
enum Case {
    RingBlocking,
    RingSpin,
    Socket,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::RingBlocking => "ring, fd wake (spin 0)",
            Case::RingSpin => "ring, spin 50 µs then fd wake",
            Case::Socket => "SOCK_SEQPACKET socket",
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        let sock = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .expect("stdin socket");
        match role.as_str() {
            "socket" => socket_host(sock),
            spin => ring_host(sock, Duration::from_micros(spin.parse().expect("spin µs"))),
        }
        return;
    }
    let rounds: usize = std::env::var("HV_VSS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20_000);
    let cases = [Case::Socket, Case::RingBlocking, Case::RingSpin];
    println!("| payload | transport | round trips/s | p50 µs | p99 µs | ratio to socket |");
    println!("|---|---|---|---|---|---|");
    for size in SIZES {
        // The cases run interleaved in REPS slices, so that load from elsewhere on the
        // machine falls on all of them alike.
        let mut runs: Vec<Run> = cases.iter().map(|_| Run::default()).collect();
        for _ in 0..REPS {
            for (case, run) in cases.iter().zip(&mut runs) {
                run_case(*case, size, rounds / REPS, run);
            }
        }
        let stats: Vec<Stats> = runs.into_iter().map(Run::stats).collect();
        let socket = stats[0].per_second;
        for (case, st) in cases.iter().zip(&stats) {
            println!(
                "| {size} B | {} | {:.0} | {:.1} | {:.1} | {:.2} |",
                case.name(),
                st.per_second,
                st.p50_us,
                st.p99_us,
                st.per_second / socket
            );
        }
    }
}

/// Interleaved slices per case and payload size.
const REPS: usize = 5;

/// Samples of one case, accumulated over its slices.
#[derive(Default)]
struct Run {
    samples: Vec<Duration>,
    total: Duration,
}

impl Run {
    fn stats(mut self) -> Stats {
        self.samples.sort_unstable();
        let n = self.samples.len();
        let pct = |p: f64| self.samples[((n as f64 * p) as usize).min(n - 1)].as_secs_f64() * 1e6;
        Stats {
            per_second: n as f64 / self.total.as_secs_f64(),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        }
    }
}

struct Stats {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn spawn(role: &str) -> (Child, OwnedFd) {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(CHILD_ENV, role)
        .stdin(Stdio::from(theirs))
        .spawn()
        .expect("spawn host");
    (child, ours)
}

fn run_case(case: Case, size: usize, rounds: usize, run: &mut Run) {
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let warmup = rounds / 10;
    let samples = &mut run.samples;
    let total;
    match case {
        Case::Socket => {
            let (mut child, sock) = spawn("socket");
            let mut buf = vec![0u8; 16 * 1024];
            let round = |buf: &mut [u8]| {
                rustix::net::send(&sock, &payload, SendFlags::empty()).expect("send");
                let (n, _) = rustix::net::recv(&sock, &mut *buf, RecvFlags::empty()).expect("recv");
                assert_eq!(&buf[..n], &payload[..]);
            };
            for _ in 0..warmup {
                round(&mut buf);
            }
            let start = Instant::now();
            for _ in 0..rounds {
                let t = Instant::now();
                round(&mut buf);
                samples.push(t.elapsed());
            }
            total = start.elapsed();
            drop(sock);
            child.wait().expect("host exit");
        }
        Case::RingBlocking | Case::RingSpin => {
            let spin = if matches!(case, Case::RingSpin) {
                SPIN
            } else {
                Duration::ZERO
            };
            let (mut child, sock) = spawn(&spin.as_micros().to_string());
            let rings = ShmRings::create(RING_LEN).expect("rings");
            rings.send_over(&sock).expect("hand over");
            let mut guest = rings.guest().expect("guest view");
            guest.set_spin(spin);
            let mut round = |id: u64| {
                guest.send(id, &payload).expect("send");
                loop {
                    if let Some(p) = guest.recv().expect("recv") {
                        assert_eq!(p.trans_id(), id);
                        assert_eq!(p.payload(), &payload[..]);
                        return;
                    }
                    assert_eq!(
                        guest.wait(TIMEOUT).expect("wait"),
                        Wake::Ready,
                        "host silent"
                    );
                }
            };
            let mut id = 0u64;
            for _ in 0..warmup {
                round(id);
                id += 1;
            }
            let start = Instant::now();
            for _ in 0..rounds {
                let t = Instant::now();
                round(id);
                id += 1;
                samples.push(t.elapsed());
            }
            total = start.elapsed();
            guest.send(SHUTDOWN, b"").expect("shutdown");
            child.wait().expect("host exit");
        }
    }
    run.total += total;
}

/// Host of the ring cases: echo every request on RX with its trans_id.
fn ring_host(sock: OwnedFd, spin: Duration) {
    let mut host = ShmRings::recv_from(&sock)
        .expect("hand-over")
        .host()
        .expect("host view");
    host.set_spin(spin);
    let mut echo = Vec::with_capacity(16 * 1024);
    loop {
        assert_eq!(
            host.wait(TIMEOUT).expect("wait"),
            Wake::Ready,
            "guest silent"
        );
        while let Some(p) = host.recv().expect("recv") {
            let id = p.trans_id();
            if id == SHUTDOWN {
                return;
            }
            echo.clear();
            echo.extend_from_slice(p.payload());
            host.send(id, &echo).expect("send");
        }
    }
}

/// Host of the socket case: echo every datagram until the peer closes.
fn socket_host(sock: OwnedFd) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (n, _) = rustix::net::recv(&sock, &mut buf, RecvFlags::empty()).expect("recv");
        if n == 0 {
            return;
        }
        rustix::net::send(&sock, &buf[..n], SendFlags::empty()).expect("send");
    }
}
