use hv_vss_protocol::freebsd::{ReadResult, build_ack, classify_read};

use super::*;

fn driver_with(devices: &[Device]) -> FreeBsdDriver {
    let mut driver = FreeBsdDriver::new();
    for device in devices {
        driver.open(*device).unwrap();
    }
    driver
}

/// Reads `device`'s next request and acks it; returns its opt.
fn serve(driver: &mut FreeBsdDriver, device: Device, success: bool) -> VssOpt {
    assert!(
        driver.poll_in(device).unwrap(),
        "{device:?} has nothing to read"
    );
    let msg = driver.read(device).unwrap();
    let ReadResult::Request { opt, msgid } = classify_read(&msg).unwrap() else {
        panic!("{device:?} read an empty queue");
    };
    assert!(
        driver
            .write(device, &build_ack(opt, msgid, success))
            .unwrap()
    );
    opt
}

fn one_answer(driver: &mut FreeBsdDriver) -> HostAnswer {
    let answers = driver.take_answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers[0]
}

fn queued_order(driver: &FreeBsdDriver) -> Vec<Device> {
    driver
        .events()
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::Queued { device, .. } => Some(device),
            _ => None,
        })
        .collect()
}

#[test]
fn second_open_is_ebusy_and_close_frees_the_device() {
    let mut driver = driver_with(&[Device::Daemon, Device::App]);
    assert_eq!(
        driver.open(Device::Daemon),
        Err(DeviceError::Busy(Device::Daemon))
    );
    assert_eq!(
        driver.open(Device::App),
        Err(DeviceError::Busy(Device::App))
    );
    driver.close(Device::Daemon).unwrap();
    driver.open(Device::Daemon).unwrap();
    assert_eq!(driver.close(Device::App), Ok(()));
    assert_eq!(
        driver.read(Device::App),
        Err(DeviceError::NotOpen(Device::App))
    );
}

#[test]
fn empty_read_is_status_one_with_opt_none() {
    let mut driver = driver_with(&[Device::Daemon]);
    assert!(!driver.poll_in(Device::Daemon).unwrap());
    let msg = driver.read(Device::Daemon).unwrap();
    assert_eq!(msg.status, OptStatus::FAIL);
    assert_eq!(msg.opt, VssOpt::NONE);
    assert_eq!(msg.msgid, 0);
    assert_eq!(classify_read(&msg), Ok(ReadResult::Empty));
}

#[test]
fn freeze_without_app_goes_to_the_daemon_and_its_ack_reaches_the_host() {
    let mut driver = driver_with(&[Device::Daemon]);
    assert!(matches!(
        driver.host_request(VssOperation::FREEZE),
        Disposition::Dispatched(_)
    ));
    assert_eq!(serve(&mut driver, Device::Daemon, true), VssOpt::FREEZE);
    assert_eq!(
        one_answer(&mut driver),
        HostAnswer {
            op: VssOperation::FREEZE,
            status: HvStatus::S_OK,
            reason: AnswerReason::Acked
        }
    );
    assert!(!driver.request_in_flight());
}

#[test]
fn check_and_freeze_go_to_the_app_before_the_daemon() {
    for op in [VssOperation::HOT_BACKUP, VssOperation::FREEZE] {
        let mut driver = driver_with(&[Device::Daemon, Device::App]);
        driver.host_request(op);
        assert!(
            !driver.poll_in(Device::Daemon).unwrap(),
            "daemon asked before the app"
        );
        serve(&mut driver, Device::App, true);
        assert!(
            driver.take_answers().is_empty(),
            "host answered before the daemon"
        );
        serve(&mut driver, Device::Daemon, true);
        assert_eq!(one_answer(&mut driver).status, HvStatus::S_OK);
        assert_eq!(queued_order(&driver), [Device::App, Device::Daemon]);
    }
}

#[test]
fn thaw_goes_to_the_daemon_before_the_app() {
    let mut driver = driver_with(&[Device::Daemon, Device::App]);
    driver.host_request(VssOperation::THAW);
    assert!(
        !driver.poll_in(Device::App).unwrap(),
        "app asked before the daemon"
    );
    assert_eq!(serve(&mut driver, Device::Daemon, true), VssOpt::THAW);
    assert!(driver.take_answers().is_empty());
    serve(&mut driver, Device::App, true);
    assert_eq!(one_answer(&mut driver).status, HvStatus::S_OK);
    assert_eq!(queued_order(&driver), [Device::Daemon, Device::App]);
}

#[test]
fn a_fail_ack_from_the_first_recipient_answers_e_fail_and_skips_the_second() {
    let mut driver = driver_with(&[Device::Daemon, Device::App]);
    driver.host_request(VssOperation::FREEZE);
    serve(&mut driver, Device::App, false);
    assert_eq!(
        one_answer(&mut driver),
        HostAnswer {
            op: VssOperation::FREEZE,
            status: HvStatus::E_FAIL,
            reason: AnswerReason::FailAck(Device::App)
        }
    );
    assert!(!driver.poll_in(Device::Daemon).unwrap());

    driver.host_request(VssOperation::THAW);
    serve(&mut driver, Device::Daemon, false);
    assert_eq!(
        one_answer(&mut driver).reason,
        AnswerReason::FailAck(Device::Daemon)
    );
    assert!(!driver.poll_in(Device::App).unwrap());
}

#[test]
fn no_ack_within_15_s_of_dispatch_answers_e_fail_and_a_late_ack_is_dropped() {
    let mut driver = driver_with(&[Device::Daemon, Device::App]);
    driver.host_request(VssOperation::FREEZE);
    driver.advance(Duration::from_secs(10));
    serve(&mut driver, Device::App, true);
    // The timer is not re-armed when the request moves on to the daemon.
    let msg = driver.read(Device::Daemon).unwrap();
    driver.advance(Duration::from_secs(4));
    assert!(driver.take_answers().is_empty());
    driver.advance(Duration::from_secs(1));
    assert_eq!(
        one_answer(&mut driver),
        HostAnswer {
            op: VssOperation::FREEZE,
            status: HvStatus::E_FAIL,
            reason: AnswerReason::Timeout
        }
    );
    let late = build_ack(msg.opt, msg.msgid, true);
    assert!(!driver.write(Device::Daemon, &late).unwrap());
    assert!(driver.take_answers().is_empty());
    assert!(driver.events().iter().any(|event| event.kind
        == EventKind::AckDropped {
            device: Device::Daemon,
            msgid: msg.msgid
        }));
}

#[test]
fn a_timed_out_request_that_was_never_read_leaves_the_queue() {
    let mut driver = driver_with(&[Device::Daemon]);
    driver.host_request(VssOperation::HOT_BACKUP);
    driver.advance(TIMEOUT_LIMIT);
    assert_eq!(one_answer(&mut driver).reason, AnswerReason::Timeout);
    assert!(!driver.poll_in(Device::Daemon).unwrap());
    assert_eq!(
        classify_read(&driver.read(Device::Daemon).unwrap()),
        Ok(ReadResult::Empty)
    );
}

#[test]
fn an_ack_for_a_msgid_never_read_is_dropped() {
    let mut driver = driver_with(&[Device::Daemon]);
    let Disposition::Dispatched(msgid) = driver.host_request(VssOperation::FREEZE) else {
        panic!("not dispatched");
    };
    // Not read yet: the request is in the notify queue, not the ack queue.
    assert!(
        !driver
            .write(Device::Daemon, &build_ack(VssOpt::FREEZE, msgid, true))
            .unwrap()
    );
    assert!(driver.take_answers().is_empty());
    assert!(driver.request_in_flight());
}

#[test]
fn a_request_while_one_is_in_flight_is_ignored() {
    let mut driver = driver_with(&[Device::Daemon]);
    driver.host_request(VssOperation::FREEZE);
    assert_eq!(
        driver.host_request(VssOperation::THAW),
        Disposition::Ignored
    );
    assert_eq!(serve(&mut driver, Device::Daemon, true), VssOpt::FREEZE);
    assert_eq!(one_answer(&mut driver).op, VssOperation::FREEZE);
    assert!(!driver.poll_in(Device::Daemon).unwrap());
}

#[test]
fn requests_wait_in_the_ring_until_the_first_daemon_open() {
    let mut driver = FreeBsdDriver::new();
    driver.open(Device::App).unwrap();
    assert_eq!(
        driver.host_request(VssOperation::HOT_BACKUP),
        Disposition::HeldInRing
    );
    driver.advance(TIMEOUT_LIMIT * 2);
    assert!(driver.take_answers().is_empty());
    driver.open(Device::Daemon).unwrap();
    serve(&mut driver, Device::App, true);
    assert_eq!(serve(&mut driver, Device::Daemon, true), VssOpt::CHECK);
    assert_eq!(one_answer(&mut driver).status, HvStatus::S_OK);
}

#[test]
fn after_the_daemon_is_gone_requests_fail_at_once_and_a_reopen_serves_again() {
    let mut driver = driver_with(&[Device::Daemon]);
    driver.close(Device::Daemon).unwrap();
    assert_eq!(
        driver.host_request(VssOperation::FREEZE),
        Disposition::Answered(HvStatus::E_FAIL)
    );
    assert_eq!(one_answer(&mut driver).reason, AnswerReason::DaemonGone);
    driver.open(Device::Daemon).unwrap();
    driver.host_request(VssOperation::FREEZE);
    serve(&mut driver, Device::Daemon, true);
    assert_eq!(one_answer(&mut driver).status, HvStatus::S_OK);
}

#[test]
fn an_app_ack_while_the_daemon_is_closed_goes_nowhere_until_the_timeout() {
    let mut driver = driver_with(&[Device::Daemon, Device::App]);
    driver.host_request(VssOperation::FREEZE);
    driver.close(Device::Daemon).unwrap();
    serve(&mut driver, Device::App, true);
    driver.open(Device::Daemon).unwrap();
    assert!(!driver.poll_in(Device::Daemon).unwrap());
    assert!(driver.take_answers().is_empty());
    driver.advance(TIMEOUT_LIMIT);
    assert_eq!(one_answer(&mut driver).reason, AnswerReason::Timeout);
}

#[test]
fn a_reopened_daemon_reads_what_was_queued_for_it() {
    let mut driver = driver_with(&[Device::Daemon]);
    driver.host_request(VssOperation::THAW);
    driver.close(Device::Daemon).unwrap();
    driver.open(Device::Daemon).unwrap();
    assert_eq!(serve(&mut driver, Device::Daemon, true), VssOpt::THAW);
    assert_eq!(one_answer(&mut driver).status, HvStatus::S_OK);
}

#[test]
fn get_dm_info_is_answered_by_the_driver_and_unknown_ops_are_ignored() {
    let mut driver = driver_with(&[Device::Daemon]);
    assert_eq!(
        driver.host_request(VssOperation::GET_DM_INFO),
        Disposition::Answered(HvStatus::S_OK)
    );
    assert_eq!(
        driver.host_request(VssOperation::BU_COMPLETE),
        Disposition::Ignored
    );
    assert!(!driver.poll_in(Device::Daemon).unwrap());
}

#[test]
fn each_request_gets_a_fresh_msgid() {
    let mut driver = driver_with(&[Device::Daemon]);
    let mut ids = Vec::new();
    for op in [
        VssOperation::HOT_BACKUP,
        VssOperation::FREEZE,
        VssOperation::THAW,
    ] {
        let Disposition::Dispatched(id) = driver.host_request(op) else {
            panic!("not dispatched");
        };
        ids.push(id);
        serve(&mut driver, Device::Daemon, true);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

/// The stock daemon's loop over the 64-byte ABI: poll, READ, act, WRITE; an empty READ goes
/// back to poll. The bytes pass through the protocol crate's parser both ways.
#[test]
fn a_daemon_loop_over_the_byte_abi_serves_a_whole_backup() {
    use hv_vss_protocol::freebsd::{parse_opt_msg, parse_read};

    let mut driver = driver_with(&[Device::Daemon, Device::App]);
    let mut served = Vec::new();
    for op in [
        VssOperation::HOT_BACKUP,
        VssOperation::FREEZE,
        VssOperation::THAW,
    ] {
        driver.host_request(op);
        for _ in 0..4 {
            for device in [Device::App, Device::Daemon] {
                let bytes = driver.read(device).unwrap().to_bytes();
                match parse_read(&bytes).unwrap() {
                    ReadResult::Empty => continue,
                    ReadResult::Request { opt, msgid } => {
                        served.push((device, opt));
                        let ack = parse_opt_msg(&build_ack(opt, msgid, true).to_bytes()).unwrap();
                        assert!(driver.write(device, &ack).unwrap());
                    }
                }
            }
        }
        assert_eq!(one_answer(&mut driver).status, HvStatus::S_OK);
    }
    assert_eq!(
        served,
        [
            (Device::App, VssOpt::CHECK),
            (Device::Daemon, VssOpt::CHECK),
            (Device::App, VssOpt::FREEZE),
            (Device::Daemon, VssOpt::FREEZE),
            (Device::Daemon, VssOpt::THAW),
            (Device::App, VssOpt::THAW),
        ]
    );
}
