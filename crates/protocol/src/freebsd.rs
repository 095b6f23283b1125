//! FreeBSD's VSS daemon ABI (`/dev/hv_fsvss_dev`, `/dev/hv_appvss_dev`) and the UFS suspend
//! ioctls, as pure data.
//!
//! Kernel contract (sys/dev/hyperv/utilities/hv_snapshot.[ch], sys/ufs/ffs/ffs_suspend.c):
//!
//! - Every exchange is one `struct hv_vss_opt_msg` of 64 bytes in the guest's native layout
//!   (`u32 opt`, `u32 status`, `u64 msgid`, 48 reserved bytes), passed by ioctl, never by
//!   read/write. Opening the device registers the daemon; a second open gets `EBUSY`.
//! - `IOCHVVSSREAD` (`_IOR('v', 2, ...)`) hands the daemon the head of its queue with
//!   status 0, or status 1 when the queue is empty. The ioctl is out-only, so FreeBSD zeroes
//!   the buffer first: an empty READ comes back as opt NONE, msgid 0, status 1.
//! - `IOCHVVSSWRITE` (`_IOW('v', 3, ...)`) acknowledges: opt and msgid echoed, status 0
//!   (success) or 1 (fail). It is in-only: a late ack (the request timed out) is dropped by
//!   the driver and the daemon learns nothing from the ioctl.
//! - `UFSSUSPEND` (`_IOW('U', 1, fsid_t)`) on an fd of `/dev/ufssuspend` suspends the mount
//!   whose `statfs.f_fsid` it is given; closing that fd (or `UFSRESUME`, `_IO('U', 2)`) ends
//!   the suspension. One fd holds one suspension.
//!
//! The ioctl numbers are computed with FreeBSD's `_IOC` encoding (sys/sys/ioccom.h): the
//! direction in the top three bits, the parameter length (13 bits) at bit 16, the group at
//! bit 8 and the number in the low byte. FreeBSD's `_IOR` is `IOC_OUT` (0x40000000) and
//! `_IOW` is `IOC_IN` (0x80000000), the reverse of Linux's bit assignment.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `IOC_VOID`: the ioctl has no parameters.
pub const IOC_VOID: u32 = 0x2000_0000;
/// `IOC_OUT`: the kernel copies the parameter out to user space.
pub const IOC_OUT: u32 = 0x4000_0000;
/// `IOC_IN`: the kernel copies the parameter in from user space.
pub const IOC_IN: u32 = 0x8000_0000;
/// `IOCPARM_MASK`: the parameter length field is 13 bits wide.
pub const IOCPARM_MASK: u32 = 0x1fff;

/// FreeBSD's `_IOC(inout, group, num, len)`.
pub const fn ioc(inout: u32, group: u8, num: u8, len: usize) -> u32 {
    // The length field holds 13 bits; every struct used here is far below that.
    inout | (((len as u32) & IOCPARM_MASK) << 16) | ((group as u32) << 8) | num as u32
}

/// FreeBSD's `_IO(group, num)`.
pub const fn io(group: u8, num: u8) -> u32 {
    ioc(IOC_VOID, group, num, 0)
}

/// FreeBSD's `_IOR(group, num, T)` with `len = sizeof(T)`.
pub const fn ior(group: u8, num: u8, len: usize) -> u32 {
    ioc(IOC_OUT, group, num, len)
}

/// FreeBSD's `_IOW(group, num, T)` with `len = sizeof(T)`.
pub const fn iow(group: u8, num: u8, len: usize) -> u32 {
    ioc(IOC_IN, group, num, len)
}

/// Size of `struct hv_vss_opt_msg`.
pub const OPT_MSG_LEN: usize = 64;
/// Size of its reserved tail.
pub const OPT_MSG_RESERVED_LEN: usize = 48;
/// Size of `fsid_t` (`int32_t val[2]`).
pub const FSID_LEN: usize = 8;

/// `IOCHVVSSREAD`: fetch the next request (0x40407602).
pub const IOCHVVSSREAD: u32 = ior(b'v', 2, OPT_MSG_LEN);
/// `IOCHVVSSWRITE`: acknowledge a request (0x80407603).
pub const IOCHVVSSWRITE: u32 = iow(b'v', 3, OPT_MSG_LEN);
/// `UFSSUSPEND`: suspend the UFS mount with this `fsid_t` (0x80085501).
pub const UFSSUSPEND: u32 = iow(b'U', 1, FSID_LEN);
/// `UFSRESUME`: end the suspension held by this fd (0x20005502).
pub const UFSRESUME: u32 = io(b'U', 2);

/// The driver's `TIMEOUT_LIMIT`: from a request's first dispatch (to an application if one
/// is registered, else to the fs daemon) to its last ack. After it the host gets E_FAIL and
/// a later ack is dropped.
pub const DRIVER_ACK_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(15);

/// The fs daemon's device.
pub const FS_VSS_DEVICE: &str = "/dev/hv_fsvss_dev";
/// The application device (hv-vssd never opens it).
pub const APP_VSS_DEVICE: &str = "/dev/hv_appvss_dev";
/// The UFS suspension device.
pub const UFS_SUSPEND_DEVICE: &str = "/dev/ufssuspend";

/// `opt` of `hv_vss_opt_msg`: an open set, so a value from a newer kernel is carried, not
/// rejected while parsing.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(transparent)]
pub struct VssOpt(pub u32);

impl VssOpt {
    /// `HV_VSS_NONE`: no request (an empty READ).
    pub const NONE: Self = Self(0);
    /// `HV_VSS_CHECK`: the host's HOT_BACKUP ("can you take a backup").
    pub const CHECK: Self = Self(1);
    /// `HV_VSS_FREEZE`.
    pub const FREEZE: Self = Self(2);
    /// `HV_VSS_THAW`.
    pub const THAW: Self = Self(3);

    /// The driver's name for it (`vss_opt_name`), or None for an unknown value.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::NONE => Some("None"),
            Self::CHECK => Some("VSSCheck"),
            Self::FREEZE => Some("Freeze"),
            Self::THAW => Some("Thaw"),
            _ => None,
        }
    }

    /// True for the three operations a daemon is asked to act on.
    pub fn is_request(self) -> bool {
        matches!(self, Self::CHECK | Self::FREEZE | Self::THAW)
    }
}

impl std::fmt::Debug for VssOpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "VssOpt::{name}"),
            None => write!(f, "VssOpt({})", self.0),
        }
    }
}

/// `status` of `hv_vss_opt_msg`: 0 success, 1 fail (open set, like [`VssOpt`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(transparent)]
pub struct OptStatus(pub u32);

impl OptStatus {
    /// `VSS_SUCCESS`.
    pub const SUCCESS: Self = Self(0);
    /// `VSS_FAIL`; on a READ: the queue was empty.
    pub const FAIL: Self = Self(1);
}

/// `struct hv_vss_opt_msg`, native layout (the guest's own ioctl ABI, not a wire format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct HvVssOptMsg {
    /// The operation.
    pub opt: VssOpt,
    /// 0 success, 1 fail.
    pub status: OptStatus,
    /// The request's id, echoed in the ack.
    pub msgid: u64,
    /// Zero; the driver clears it on every ack.
    pub reserved: [u8; OPT_MSG_RESERVED_LEN],
}

const _: () = assert!(core::mem::size_of::<HvVssOptMsg>() == OPT_MSG_LEN);
const _: () = assert!(core::mem::align_of::<HvVssOptMsg>() == 8);
const _: () = assert!(core::mem::offset_of!(HvVssOptMsg, opt) == 0);
const _: () = assert!(core::mem::offset_of!(HvVssOptMsg, status) == 4);
const _: () = assert!(core::mem::offset_of!(HvVssOptMsg, msgid) == 8);
const _: () = assert!(core::mem::offset_of!(HvVssOptMsg, reserved) == 16);

impl HvVssOptMsg {
    /// A message with zero reserved bytes.
    pub fn new(opt: VssOpt, status: OptStatus, msgid: u64) -> Self {
        Self {
            opt,
            status,
            msgid,
            reserved: [0; OPT_MSG_RESERVED_LEN],
        }
    }

    /// What an empty READ returns (the zeroed buffer with status 1).
    pub fn empty_read() -> Self {
        Self::new(VssOpt::NONE, OptStatus::FAIL, 0)
    }

    /// The message's 64 bytes.
    pub fn to_bytes(&self) -> [u8; OPT_MSG_LEN] {
        let mut out = [0u8; OPT_MSG_LEN];
        out.copy_from_slice(self.as_bytes());
        out
    }
}

/// A buffer that is not an `hv_vss_opt_msg`, or a READ result that is neither a request
/// nor "queue empty".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreeBsdMsgError {
    /// The buffer has the wrong length.
    #[error("hv_vss_opt_msg of {len} bytes, expected {OPT_MSG_LEN}")]
    WrongLength {
        /// Bytes given.
        len: usize,
    },
    /// A READ result with status 0 but no operation the daemon can act on.
    #[error("READ returned unknown operation {} (status {}, msgid {msgid})", .opt.0, .status.0)]
    UnexpectedRead {
        /// The operation.
        opt: VssOpt,
        /// The status.
        status: OptStatus,
        /// The msgid.
        msgid: u64,
    },
}

/// Parses 64 bytes as an `hv_vss_opt_msg` (any field values).
pub fn parse_opt_msg(bytes: &[u8]) -> Result<HvVssOptMsg, FreeBsdMsgError> {
    HvVssOptMsg::read_from_bytes(bytes)
        .map_err(|_| FreeBsdMsgError::WrongLength { len: bytes.len() })
}

/// What a daemon's `IOCHVVSSREAD` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// The queue was empty (status 1): go back to poll.
    Empty,
    /// A request to act on and acknowledge with its msgid.
    Request {
        /// CHECK, FREEZE or THAW.
        opt: VssOpt,
        /// Echo it in the ack.
        msgid: u64,
    },
}

/// Classifies a READ result: status 1 is "empty" whatever else it says (the driver sets
/// only the status then); status 0 must carry CHECK, FREEZE or THAW.
pub fn classify_read(msg: &HvVssOptMsg) -> Result<ReadResult, FreeBsdMsgError> {
    if msg.status == OptStatus::FAIL {
        return Ok(ReadResult::Empty);
    }
    if msg.status == OptStatus::SUCCESS && msg.opt.is_request() {
        return Ok(ReadResult::Request {
            opt: msg.opt,
            msgid: msg.msgid,
        });
    }
    Err(FreeBsdMsgError::UnexpectedRead {
        opt: msg.opt,
        status: msg.status,
        msgid: msg.msgid,
    })
}

/// Parses and classifies the 64 bytes a READ returned.
pub fn parse_read(bytes: &[u8]) -> Result<ReadResult, FreeBsdMsgError> {
    classify_read(&parse_opt_msg(bytes)?)
}

/// The daemon's ack for `IOCHVVSSWRITE`: opt and msgid echoed, status 0 on success, 1 on
/// failure, reserved zero.
pub fn build_ack(opt: VssOpt, msgid: u64, success: bool) -> HvVssOptMsg {
    let status = if success {
        OptStatus::SUCCESS
    } else {
        OptStatus::FAIL
    };
    HvVssOptMsg::new(opt, status, msgid)
}

/// `fsid_t`: two `int32_t`, as `statfs.f_fsid` holds it and `UFSSUSPEND` takes it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct FsId {
    /// `val[0]`, `val[1]`.
    pub val: [i32; 2],
}

const _: () = assert!(core::mem::size_of::<FsId>() == FSID_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ioctl_numbers_are_the_freebsd_literals() {
        assert_eq!(IOCHVVSSREAD, 0x4040_7602);
        assert_eq!(IOCHVVSSWRITE, 0x8040_7603);
        assert_eq!(UFSSUSPEND, 0x8008_5501);
        assert_eq!(UFSRESUME, 0x2000_5502);
    }

    #[test]
    fn ioc_places_each_field() {
        assert_eq!(ioc(0, 0, 0, 0x1fff), 0x1fff_0000);
        // The length is masked to 13 bits, as IOCPARM_MASK does.
        assert_eq!(ioc(0, 0, 0, 0x2000), 0);
        assert_eq!(ioc(0, 0xab, 0, 0), 0xab00);
        assert_eq!(ioc(0, 0, 0xcd, 0), 0xcd);
        assert_eq!(io(b'U', 2) & 0xe000_0000, IOC_VOID);
    }

    #[test]
    fn opt_msg_layout() {
        assert_eq!(core::mem::size_of::<HvVssOptMsg>(), 64);
        assert_eq!(core::mem::offset_of!(HvVssOptMsg, opt), 0);
        assert_eq!(core::mem::offset_of!(HvVssOptMsg, status), 4);
        assert_eq!(core::mem::offset_of!(HvVssOptMsg, msgid), 8);
        assert_eq!(core::mem::offset_of!(HvVssOptMsg, reserved), 16);
    }

    #[test]
    fn ack_bytes_on_a_little_endian_guest() {
        let bytes = build_ack(VssOpt::FREEZE, 0x0102_0304_0506_0708, false).to_bytes();
        let mut expected = [0u8; 64];
        expected[..4].copy_from_slice(&2u32.to_ne_bytes());
        expected[4..8].copy_from_slice(&1u32.to_ne_bytes());
        expected[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(bytes, expected);
        if cfg!(target_endian = "little") {
            assert_eq!(
                &bytes[..16],
                &[2, 0, 0, 0, 1, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
            );
        }
    }

    #[test]
    fn empty_read_is_status_one_with_opt_none() {
        let bytes = HvVssOptMsg::empty_read().to_bytes();
        assert_eq!(parse_read(&bytes), Ok(ReadResult::Empty));
        let mut expected = [0u8; 64];
        expected[4..8].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn read_of_a_request() {
        let msg = HvVssOptMsg::new(VssOpt::THAW, OptStatus::SUCCESS, 77);
        assert_eq!(
            parse_read(&msg.to_bytes()),
            Ok(ReadResult::Request {
                opt: VssOpt::THAW,
                msgid: 77
            })
        );
    }

    #[test]
    fn read_with_status_zero_and_no_operation_is_an_error() {
        for opt in [VssOpt::NONE, VssOpt(4), VssOpt(u32::MAX)] {
            let msg = HvVssOptMsg::new(opt, OptStatus::SUCCESS, 5);
            assert_eq!(
                parse_read(&msg.to_bytes()),
                Err(FreeBsdMsgError::UnexpectedRead {
                    opt,
                    status: OptStatus::SUCCESS,
                    msgid: 5
                })
            );
        }
        let odd_status = HvVssOptMsg::new(VssOpt::FREEZE, OptStatus(7), 5);
        assert!(parse_read(&odd_status.to_bytes()).is_err());
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        for len in [0, 1, 63, 65, 128] {
            assert_eq!(
                parse_opt_msg(&vec![0; len]),
                Err(FreeBsdMsgError::WrongLength { len })
            );
        }
    }

    #[test]
    fn opt_names_are_the_drivers() {
        assert_eq!(VssOpt::CHECK.name(), Some("VSSCheck"));
        assert_eq!(format!("{:?}", VssOpt(9)), "VssOpt(9)");
        assert!(!VssOpt::NONE.is_request());
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..130)) {
            if let Ok(msg) = parse_opt_msg(&bytes) {
                prop_assert_eq!(&msg.to_bytes()[..], &bytes[..]);
                let _ = classify_read(&msg);
            } else {
                prop_assert_ne!(bytes.len(), 64);
            }
        }

        #[test]
        fn ack_parses_back(opt in any::<u32>(), msgid in any::<u64>(), ok in any::<bool>()) {
            let ack = build_ack(VssOpt(opt), msgid, ok);
            let parsed = parse_opt_msg(&ack.to_bytes()).unwrap();
            prop_assert_eq!(parsed, ack);
            prop_assert_eq!(parsed.status.0, u32::from(!ok));
            prop_assert!(parsed.reserved.iter().all(|b| *b == 0));
        }
    }
}
