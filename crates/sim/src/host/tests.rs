use super::*;
use hv_vss_vmbus::ic_endpoint::{IcEndpoint, IcEvent};

fn setup() -> (HostSimulator, IcEndpoint<ShmChannel>) {
    let (sim, rings) = HostSimulator::create(64 * 1024, HostConfig::default()).unwrap();
    (sim, IcEndpoint::new(rings.guest().unwrap()))
}

#[test]
fn single_threaded_freeze_round_trip_with_lun_bytes() {
    let (mut sim, mut ep) = setup();
    let n = sim.post_negotiate().unwrap();
    ep.service().unwrap();
    assert!(matches!(
        sim.await_negotiate(n).unwrap(),
        NegotiationResult::Agreed { .. }
    ));
    let lun: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let t = sim.post_vss(VssOperation::FREEZE, 0, &lun).unwrap();
    let mut events = ep.service().unwrap();
    let Some(IcEvent::Request(req)) = events.pop() else {
        panic!("no request")
    };
    assert_eq!(req.trans_id(), t.trans_id);
    ep.reply(req, HvStatus::S_OK).unwrap();
    let reply = sim.await_vss(t).unwrap();
    assert_eq!(reply.status, HvStatus::S_OK);
    assert_eq!(sim.exchanges().len(), 2);
    assert!(matches!(
        sim.exchanges()[1].outcome,
        ExchangeOutcome::Replied {
            status: HvStatus::S_OK,
            ..
        }
    ));
}

#[test]
fn checker_flags_a_missing_hot_backup_flag_and_a_changed_lun_byte() {
    let req = vss::build_request(VssOperation::HOT_BACKUP, 0, &[]).unwrap();
    let mut good = req.clone();
    good[25] = 5;
    good[36] = 5;
    let packet = |payload: Vec<u8>| ReceivedPacket {
        trans_id: 1,
        packet_type: 6,
        flags: 0,
        payload,
        at: Duration::ZERO,
    };
    assert!(check_vss_reply(&req, &packet(good.clone())).is_ok());
    let mut no_flag = good.clone();
    no_flag[36] = 0;
    assert_eq!(
        check_vss_reply(&req, &packet(no_flag)),
        Err(ReplyViolation::HotBackupFlags(0))
    );
    let freeze = vss::build_request(VssOperation::FREEZE, 0, &[1, 2, 3, 4]).unwrap();
    let mut reply = freeze.clone();
    reply[25] = 5;
    reply[41] = 9;
    reply.resize(48, 0); // the ring pads the 44-byte payload to 48
    assert_eq!(
        check_vss_reply(&freeze, &packet(reply)),
        Err(ReplyViolation::Echo {
            offset: 41,
            expected: 2,
            got: 9
        })
    );
    let mut bad_status = good;
    bad_status[20..24].copy_from_slice(&HvStatus::INVALIDARG.0.to_le_bytes());
    assert_eq!(
        check_vss_reply(&req, &packet(bad_status)),
        Err(ReplyViolation::Status(HvStatus::INVALIDARG))
    );
}
