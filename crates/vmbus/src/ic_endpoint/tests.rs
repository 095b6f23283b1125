use super::*;
use crate::shm::{ShmChannel, ShmRings};
use hv_vss_protocol::negotiate::{build_offer, parse_reply};
use hv_vss_protocol::vss::build_request;

fn pair() -> (IcEndpoint<ShmChannel>, ShmChannel) {
    let rings = ShmRings::create(64 * 1024).unwrap();
    let host = rings.try_clone().unwrap().host().unwrap();
    (IcEndpoint::new(rings.guest().unwrap()), host)
}

fn replies(host: &mut ShmChannel) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(p) = host.recv().unwrap() {
        out.push((p.trans_id(), p.payload().to_vec()));
    }
    out
}

#[test]
fn negotiate_waiting_before_the_first_service_is_answered() {
    let (mut ep, mut host) = pair();
    let offer = build_offer(
        &[Version::new(1, 0), Version::new(3, 0)],
        &[Version::new(5, 0)],
    )
    .unwrap();
    host.send(0x2a, &offer).unwrap();
    assert!(ep.service().unwrap().is_empty());
    let got = replies(&mut host);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 0x2a);
    let r = parse_reply(&got[0].1).unwrap();
    assert_eq!(r.chosen, Some((Version::new(3, 0), Version::new(5, 0))));
    assert_eq!(
        ep.versions().map(|(f, m)| (f.to_string(), m.to_string())),
        Some(("3.0".into(), "5.0".into()))
    );
    assert!(!ep.channel().reader().unwrap().is_masked(), "left unmasked");
}

#[test]
fn dropped_token_is_answered_e_fail_once() {
    let (mut ep, mut host) = pair();
    host.send(7, &build_request(VssOperation::FREEZE, 0, &[]).unwrap())
        .unwrap();
    let events = ep.service().unwrap();
    assert_eq!(events.len(), 1);
    drop(events);
    assert!(
        replies(&mut host).is_empty(),
        "nothing sent until the next call"
    );
    ep.flush().unwrap();
    let got = replies(&mut host);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].1[20..24], &HvStatus::E_FAIL.0.to_le_bytes());
    assert_eq!(ep.pending_requests(), 0);
    assert!(
        ep.take_notices()
            .iter()
            .any(|n| matches!(n, IcNotice::Abandoned { trans_id: 7, .. }))
    );
    ep.flush().unwrap();
    assert!(replies(&mut host).is_empty(), "never twice");
}

#[test]
fn notices_are_rate_limited_per_kind() {
    let rings = ShmRings::create(64 * 1024).unwrap();
    let mut host = rings.try_clone().unwrap().host().unwrap();
    let config = EndpointConfig {
        notice_burst: 2,
        notice_interval: Duration::from_millis(50),
        max_queued_notices: 100,
        ..EndpointConfig::default()
    };
    let mut ep = IcEndpoint::with_config(rings.guest().unwrap(), config);
    for id in 0..5 {
        host.send(id, &[0u8; 8]).unwrap();
    }
    ep.service().unwrap();
    let first = ep.take_notices();
    assert_eq!(first.len(), 2);
    assert_eq!(ep.suppressed_notices(), 3);
    std::thread::sleep(Duration::from_millis(60));
    let later = ep.take_notices();
    assert_eq!(
        later,
        vec![IcNotice::Suppressed {
            kind: NoticeKind::Dropped,
            count: 3
        }]
    );
    assert_eq!(ep.stats().dropped, 5);
}
