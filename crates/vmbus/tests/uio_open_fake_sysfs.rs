//! `UioChannel::open_with` against a fake `/sys/class/uio` and `/dev` laid out as the kernel
//! shows them (`hv_vss_testutil::fake_vmbus`): the ring size comes from map 0's sysfs size
//! (0x402000 on current kernels, 0x400000 before commit 0315fef2aff9), and a channel with a
//! monitor page is refused. `/dev/uio3` is a regular file of map 0's size: mapping and ring
//! placement work as on the real node; its read/write/poll semantics do not, so nothing
//! here signals.

use std::sync::Arc;

use hv_vss_ring::{RingMem, RingReader, RingWriter};
use hv_vss_sys::mem::{SharedMapping, page_size, ring_pair};
use hv_vss_sys::uio::UioPaths;
use hv_vss_testutil::fake_vmbus::{
    FakeVmbus, MAP0_BEFORE_0315FEF2AFF9, MAP0_CURRENT, VSS_CLASS, VSS_INSTANCE,
};
use hv_vss_vmbus::uio::{ChannelError, UioChannel, VmbusChannel};

const NODE: u32 = 3;

fn vss_on_uio(map0_len: u64) -> (FakeVmbus, UioPaths) {
    let bus = FakeVmbus::new();
    bus.add_device(VSS_INSTANCE, VSS_CLASS, true);
    bus.set_driver(VSS_INSTANCE, Some("uio_hv_generic"));
    bus.add_uio_node(VSS_INSTANCE, NODE, map0_len);
    let paths = UioPaths {
        sysfs_class_uio: bus.root().join("sys/class/uio"),
        dev: bus.root().join("dev"),
    };
    (bus, paths)
}

/// Wire §3.2: TX at offset 0, RX at map 0 size / 2, each with a one-page header, for both
/// map 0 sizes real kernels give.
#[test]
fn rings_sit_where_map0_size_says_on_current_and_older_kernels() {
    for map0_len in [MAP0_CURRENT, MAP0_BEFORE_0315FEF2AFF9] {
        let (bus, paths) = vss_on_uio(map0_len);
        let ring_len = (map0_len / 2) as usize;
        let mut ch = UioChannel::open_with(paths, NODE).unwrap();
        let reader = ch.reader().unwrap();
        assert_eq!(
            reader.mem().data_len(),
            ring_len - page_size(),
            "{map0_len:#x}"
        );
        assert_eq!(
            ch.writer().unwrap().mem().data_len(),
            ring_len - page_size()
        );

        // The host's view of the same file: it writes RX (the second half) ...
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(bus.root().join("dev/uio3"))
            .unwrap();
        let map =
            SharedMapping::map(std::os::fd::AsFd::as_fd(&file), 0, map0_len as usize).unwrap();
        let (host_tx_view, host_rx_view) = ring_pair(Arc::new(map), ring_len, page_size()).unwrap();
        let mut host_writer = RingWriter::new(host_rx_view).unwrap();
        let _ = host_writer.write(0x2a, b"negotiate").unwrap();
        let got = ch.recv().unwrap().expect("the packet the host put in RX");
        assert_eq!(got.trans_id(), 0x2a);
        assert_eq!(&got.payload()[..9], b"negotiate");
        assert!(ch.recv().unwrap().is_none());
        // ... and reads TX (the first half), empty so far.
        let mut host_reader = RingReader::new(host_tx_view).unwrap();
        assert!(!host_reader.has_data().unwrap());
        assert!(host_reader.read().is_err());
    }
}

/// Wire §3.3: `write(1)` signals the host only on a channel without a monitor page;
/// `monitor_id` marks one, and UIO mode refuses it before opening anything.
#[test]
fn a_channel_with_a_monitor_page_is_refused_at_open() {
    let (bus, paths) = vss_on_uio(MAP0_CURRENT);
    assert!(UioChannel::open_with(paths.clone(), NODE).is_ok());
    bus.add_monitor_page(VSS_INSTANCE);
    let err = UioChannel::open_with(paths, NODE).unwrap_err();
    let ChannelError::MonitorPage { index, monitor_id } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*index, NODE);
    assert!(monitor_id.ends_with("monitor_id"), "{monitor_id:?}");
    assert!(err.to_string().contains("drop-in mode"), "{err}");
}
