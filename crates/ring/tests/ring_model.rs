//! Property tests: writer and reader against a plain FIFO model, and corruption never panics.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use hv_vss_ring::{
    Corruption, HeaderWord, InProcessRing, RingError, RingMem, RingReader, RingWriter,
};
use proptest::prelude::*;

/// Ring bytes a packet with `payload_len` bytes occupies.
fn ring_len(payload_len: usize) -> usize {
    (16 + payload_len).next_multiple_of(8) + 8
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..700).prop_map(Op::Write),
        2 => Just(Op::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every packet comes out once, in order, byte for byte; Full exactly when the model
    /// says so; signal exactly when the ring went from empty to non-empty.
    #[test]
    fn writer_and_reader_agree_with_a_fifo(
        data_len8 in 32usize..512,
        start8 in 0usize..512,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let data_len = data_len8 * 8;
        let start = ((start8 % data_len8) * 8) as u32;
        let ring = InProcessRing::new(data_len);
        ring.header_word(HeaderWord::ReadIndex).store(start, Relaxed);
        ring.header_word(HeaderWord::WriteIndex).store(start, Relaxed);
        let mut writer = RingWriter::new(&ring).unwrap();
        let mut reader = RingReader::new(&ring).unwrap();
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut next_id = 0u64;

        for op in ops {
            match op {
                Op::Write(len) => {
                    let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ next_id) as u8).collect();
                    let used: usize = model.iter().map(|(_, p)| ring_len(p.len())).sum();
                    let needed = ring_len(len);
                    match writer.write(next_id, &payload) {
                        Ok(sent) => {
                            prop_assert!(data_len - used > needed);
                            prop_assert_eq!(sent.signal_peer, model.is_empty());
                            prop_assert_eq!(sent.ring_len, needed);
                            model.push_back((next_id, payload));
                            next_id += 1;
                        }
                        Err(RingError::Full { needed: n, free }) => {
                            prop_assert_eq!(n, needed);
                            prop_assert_eq!(free, data_len - used);
                            prop_assert!(free <= needed);
                        }
                        Err(RingError::PayloadTooLarge { .. }) => prop_assert!(needed >= data_len),
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Read => match reader.read() {
                    Ok(got) => {
                        let (id, payload) = model.pop_front().expect("model has a packet");
                        prop_assert_eq!(got.packet.trans_id(), id);
                        let body = got.packet.payload();
                        prop_assert_eq!(&body[..payload.len()], &payload[..]);
                        prop_assert!(body[payload.len()..].iter().all(|&b| b == 0));
                        prop_assert!(body.len() - payload.len() < 8);
                    }
                    Err(RingError::Empty) => prop_assert!(model.is_empty()),
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                },
            }
            prop_assert_eq!(ring.header_word(HeaderWord::WriteIndex).load(Relaxed), writer.write_pos());
            prop_assert_eq!(ring.header_word(HeaderWord::ReadIndex).load(Relaxed), reader.read_pos());
        }
    }

    /// Whatever the peer does to indices and data bytes, reading and writing end in a
    /// typed result, never a panic or an out-of-range access (InProcessRing panics on one).
    #[test]
    fn corruption_never_panics(
        data_len8 in 8usize..256,
        packets in proptest::collection::vec(0usize..200, 0..8),
        pokes in proptest::collection::vec((0usize..4096, any::<u8>()), 0..16),
        write_index in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
        read_index in prop_oneof![Just(None), any::<u32>().prop_map(Some)],
    ) {
        let data_len = data_len8 * 8;
        let ring = InProcessRing::new(data_len);
        let mut writer = RingWriter::new(&ring).unwrap();
        for (id, len) in packets.iter().enumerate() {
            let _ = writer.write(id as u64, &vec![0xa5; *len]);
        }
        for (at, byte) in pokes {
            ring.write_data(at % data_len, &[byte]);
        }
        if let Some(w) = write_index {
            ring.header_word(HeaderWord::WriteIndex).store(w, Relaxed);
        }
        if let Some(r) = read_index {
            ring.header_word(HeaderWord::ReadIndex).store(r, Relaxed);
        }
        if let Ok(mut reader) = RingReader::new(&ring) {
            for _ in 0..64 {
                match reader.read() {
                    Ok(got) => prop_assert!(got.packet.bytes.len() + 8 <= data_len),
                    Err(RingError::Empty) => break,
                    Err(RingError::Corrupt(
                        Corruption::Index { .. }
                        | Corruption::DescriptorOffset { .. }
                        | Corruption::PacketPastWriteIndex { .. },
                    )) => break,
                    Err(RingError::Oversize { .. }) => break,
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
            }
        }
        if let Ok(mut writer) = RingWriter::new(&ring) {
            for len in [0usize, 8, 100] {
                let _ = writer.write(1, &vec![1; len]);
            }
        }
    }
}
