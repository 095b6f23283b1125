//! GUIDs of the VSS integration service (wire-protocol.md §1).

/// The VSS ("Backup (volume checkpoint)") device class GUID, as sysfs prints it (no braces).
/// Find the device by this class; never hard-code the instance GUID (R1).
pub const VSS_CLASS_GUID_STR: &str = "35fa2e29-ea23-4236-96ae-3a6ebacba440";

/// The same class GUID as its 16 bytes in memory (first three groups little-endian).
pub const VSS_CLASS_GUID_BYTES: [u8; 16] = [
    0x29, 0x2e, 0xfa, 0x35, 0x23, 0xea, 0x36, 0x42, 0x96, 0xae, 0x3a, 0x6e, 0xba, 0xcb, 0xa4, 0x40,
];
