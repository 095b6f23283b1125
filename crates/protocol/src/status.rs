//! HRESULT status codes carried in the IC message header (wire-protocol.md §7).
//!
//! The host reads the `status` field (payload offset 20) of every IC reply. hv-vss only ever
//! produces [`HvStatus::S_OK`] and [`HvStatus::E_FAIL`] (R8); the other named codes exist so
//! that a value seen on the wire (for example in a simulator) logs by name.

/// A 32-bit HRESULT as it sits in `icmsg_hdr.status`. Open: any value is representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HvStatus(pub u32);

impl HvStatus {
    /// `HV_S_OK`: success.
    pub const S_OK: Self = Self(0x0000_0000);
    /// `HV_E_FAIL`: every failure, veto and timeout of VSS.
    pub const E_FAIL: Self = Self(0x8000_4005);
    /// `HV_S_CONT` (never used by VSS).
    pub const S_CONT: Self = Self(0x8007_0103);
    /// `HV_ERROR_NOT_SUPPORTED` (never used by VSS).
    pub const ERROR_NOT_SUPPORTED: Self = Self(0x8007_0032);
    /// `HV_ERROR_MACHINE_LOCKED` (never used by VSS).
    pub const ERROR_MACHINE_LOCKED: Self = Self(0x8007_04F7);
    /// `HV_ERROR_DEVICE_NOT_CONNECTED` (never used by VSS).
    pub const ERROR_DEVICE_NOT_CONNECTED: Self = Self(0x8007_048F);
    /// `HV_INVALIDARG` (never used by VSS).
    pub const INVALIDARG: Self = Self(0x8007_0057);
    /// `HV_GUID_NOTFOUND` (never used by VSS).
    pub const GUID_NOTFOUND: Self = Self(0x8004_1002);
    /// `HV_ERROR_ALREADY_EXISTS` (never used by VSS).
    pub const ERROR_ALREADY_EXISTS: Self = Self(0x8007_0050);
    /// `HV_ERROR_DISK_FULL` (never used by VSS).
    pub const ERROR_DISK_FULL: Self = Self(0x8007_0070);

    /// True for `S_OK` only: VSS treats every other value as failure.
    pub fn is_ok(self) -> bool {
        self == Self::S_OK
    }

    /// `S_OK` when `ok`, `E_FAIL` otherwise: the only two values hv-vss writes (R8).
    pub fn from_success(ok: bool) -> Self {
        if ok { Self::S_OK } else { Self::E_FAIL }
    }

    /// The name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::S_OK => "S_OK",
            Self::E_FAIL => "E_FAIL",
            Self::S_CONT => "S_CONT",
            Self::ERROR_NOT_SUPPORTED => "ERROR_NOT_SUPPORTED",
            Self::ERROR_MACHINE_LOCKED => "ERROR_MACHINE_LOCKED",
            Self::ERROR_DEVICE_NOT_CONNECTED => "ERROR_DEVICE_NOT_CONNECTED",
            Self::INVALIDARG => "INVALIDARG",
            Self::GUID_NOTFOUND => "GUID_NOTFOUND",
            Self::ERROR_ALREADY_EXISTS => "ERROR_ALREADY_EXISTS",
            Self::ERROR_DISK_FULL => "ERROR_DISK_FULL",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for HvStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "HvStatus({:#010x})", self.0),
        }
    }
}

impl core::fmt::Display for HvStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({:#010x})", self.0),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_fail_is_the_bytes_of_section_7() {
        assert_eq!(HvStatus::E_FAIL.0.to_le_bytes(), [0x05, 0x40, 0x00, 0x80]);
        assert_eq!(HvStatus::from_success(false), HvStatus::E_FAIL);
        assert_eq!(HvStatus::from_success(true), HvStatus::S_OK);
        assert!(HvStatus::S_OK.is_ok() && !HvStatus::E_FAIL.is_ok());
    }

    #[test]
    fn debug_prints_name_or_raw_value() {
        assert_eq!(format!("{:?}", HvStatus::E_FAIL), "E_FAIL");
        assert_eq!(
            format!("{:?}", HvStatus::ERROR_DISK_FULL),
            "ERROR_DISK_FULL"
        );
        assert_eq!(format!("{:?}", HvStatus(7)), "HvStatus(0x00000007)");
        assert_eq!(HvStatus::E_FAIL.to_string(), "E_FAIL (0x80004005)");
    }
}
