use proptest::prelude::*;

use super::*;

#[test]
fn register_with_defaults_and_unknown_fields() {
    let m = parse_client_line(br#"{"type":"register","name":"pg","future":[1,2]}"#).unwrap();
    assert_eq!(
        m,
        ClientMessage::Register(Register {
            name: "pg".into(),
            tier: None,
            timeout_ms: None
        })
    );
    let m = parse_client_line(
        b"{\"type\":\"register\",\"name\":\"db\",\"tier\":5,\"timeout_ms\":900}\n",
    )
    .unwrap();
    assert_eq!(
        m,
        ClientMessage::Register(Register {
            name: "db".into(),
            tier: Some(5),
            timeout_ms: Some(900)
        })
    );
}

#[test]
fn bad_registrations_name_the_problem() {
    for (line, want) in [
        (r#"{"type":"register","name":""}"#, "empty"),
        (r#"{"type":"register","name":"a","tier":256}"#, "tier 256"),
        (r#"{"type":"register","name":"a","tier":-1}"#, "register"),
        (
            r#"{"type":"register","name":"a","timeout_ms":0}"#,
            "timeout_ms",
        ),
        (r#"{"type":"register","name":"a\nb"}"#, "control"),
        (r#"{"type":"register"}"#, "name"),
    ] {
        let e = parse_client_line(line.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
    let long = format!(
        r#"{{"type":"register","name":"{}"}}"#,
        "x".repeat(MAX_NAME + 1)
    );
    assert!(parse_client_line(long.as_bytes()).is_err());
}

#[test]
fn ack_and_errors() {
    assert_eq!(
        parse_client_line(br#"{"type":"ack","txn":7,"ok":false,"message":"busy"}"#).unwrap(),
        ClientMessage::Ack(Ack {
            txn: 7,
            ok: false,
            message: Some("busy".into())
        })
    );
    assert_eq!(
        parse_client_line(br#"{"type":"hello"}"#),
        Err(ProtocolError::UnknownType("hello".into()))
    );
    assert_eq!(
        parse_client_line(br#"{"txn":1}"#),
        Err(ProtocolError::NoType)
    );
    assert_eq!(parse_client_line(b"\xff\xfe"), Err(ProtocolError::NotUtf8));
    assert!(matches!(
        parse_client_line(b"[1]"),
        Err(ProtocolError::NotJson(_))
    ));
    assert!(matches!(
        parse_client_line(br#"{"type":"ack","txn":"1","ok":true}"#),
        Err(ProtocolError::BadField { kind: "ack", .. })
    ));
}

#[test]
fn daemon_messages_round_trip_in_the_documented_shape() {
    let cases = [
        (
            DaemonMessage::Registered {
                name: "pg".into(),
                protocol: 1,
            },
            r#"{"type":"registered","name":"pg","protocol":1}"#,
        ),
        (
            DaemonMessage::event(EventKind::Freeze, 3, 29_000),
            r#"{"type":"freeze","txn":3,"deadline_ms":29000}"#,
        ),
        (
            DaemonMessage::Abort {
                txn: 3,
                reason: "auto-thaw".into(),
            },
            r#"{"type":"abort","txn":3,"reason":"auto-thaw"}"#,
        ),
        (
            DaemonMessage::AckRejected {
                txn: 2,
                reason: "late".into(),
            },
            r#"{"type":"ack_rejected","txn":2,"reason":"late"}"#,
        ),
    ];
    for (msg, text) in cases {
        let line = msg.to_line();
        assert_eq!(line, format!("{text}\n").into_bytes());
        assert_eq!(parse_daemon_line(&line).unwrap(), msg);
    }
    assert_eq!(
        parse_daemon_line(br#"{"type":"ping","x":1}"#),
        Err(ProtocolError::UnknownType("ping".into()))
    );
}

#[test]
fn client_lines_are_the_documented_shape() {
    let r = ClientMessage::Register(Register {
        name: "pg".into(),
        tier: Some(10),
        timeout_ms: None,
    });
    assert_eq!(
        r.to_line(),
        b"{\"type\":\"register\",\"name\":\"pg\",\"tier\":10}\n"
    );
    let a = ClientMessage::Ack(Ack {
        txn: 4,
        ok: true,
        message: None,
    });
    assert_eq!(a.to_line(), b"{\"type\":\"ack\",\"txn\":4,\"ok\":true}\n");
    assert_eq!(parse_client_line(&a.to_line()).unwrap(), a);
}

#[test]
fn line_buffer_splits_and_bounds() {
    let mut b = LineBuffer::new();
    b.push(b"{\"a\":1}\n{\"b\"");
    assert_eq!(b.next_line().unwrap(), Some(b"{\"a\":1}".to_vec()));
    assert_eq!(b.next_line().unwrap(), None);
    b.push(b":2}\n");
    assert_eq!(b.next_line().unwrap(), Some(b"{\"b\":2}".to_vec()));
    assert_eq!(b.pending(), 0);

    let mut b = LineBuffer::new();
    b.push(&vec![b'x'; MAX_LINE - 1]);
    assert_eq!(b.next_line().unwrap(), None);
    b.push(b"\n");
    assert_eq!(b.next_line().unwrap().map(|l| l.len()), Some(MAX_LINE - 1));

    let mut b = LineBuffer::new();
    b.push(&vec![b'x'; MAX_LINE]);
    assert_eq!(b.next_line(), Err(ProtocolError::TooLong));
    let mut b = LineBuffer::new();
    let mut long = vec![b'x'; MAX_LINE];
    long.push(b'\n');
    b.push(&long);
    assert_eq!(b.next_line(), Err(ProtocolError::TooLong));
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_client_line(&bytes);
        let _ = parse_daemon_line(&bytes);
        let mut b = LineBuffer::new();
        b.push(&bytes);
        while let Ok(Some(_)) = b.next_line() {}
    }

    #[test]
    fn chunking_does_not_change_the_lines(
        lines in proptest::collection::vec("[a-z{}\":,0-9]{0,40}", 0..10),
        cut in 1usize..17,
    ) {
        let stream: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect();
        let mut b = LineBuffer::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(cut) {
            b.push(chunk);
            while let Some(l) = b.next_line().unwrap() {
                got.push(String::from_utf8(l).unwrap());
            }
        }
        prop_assert_eq!(got, lines);
    }
}
