//! What a hook is told: the operation, and the argument each directory style spells it with.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The calling convention of a hook directory: which argument a hook gets for each operation.
///
/// | operation | `native` | `qemu-ga` | `vmware`     |
/// |-----------|----------|-----------|--------------|
/// | freeze    | `freeze` | `freeze`  | `freeze`     |
/// | thaw      | `thaw`   | `thaw`    | `thaw`       |
/// | abort     | `abort`  | `thaw`    | `freezeFail` |
///
/// `qemu-ga` runs qemu-guest-agent `fsfreeze-hook.d` scripts unchanged (they know only
/// `freeze` and `thaw`, so a failed backup is a thaw for them); `vmware` runs open-vm-tools
/// `backupScripts.d` scripts unchanged (`freezeFail` is their abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum HookStyle {
    /// hv-vss's own convention: `freeze`, `thaw`, `abort`.
    #[default]
    #[serde(rename = "native")]
    Native,
    /// qemu-guest-agent `fsfreeze-hook.d`: `freeze`, `thaw` (abort sent as `thaw`).
    #[serde(rename = "qemu-ga")]
    QemuGa,
    /// open-vm-tools `backupScripts.d`: `freeze`, `freezeFail`, `thaw`.
    #[serde(rename = "vmware")]
    Vmware,
}

impl HookStyle {
    /// The configuration spelling: `native`, `qemu-ga` or `vmware`.
    pub fn name(self) -> &'static str {
        match self {
            HookStyle::Native => "native",
            HookStyle::QemuGa => "qemu-ga",
            HookStyle::Vmware => "vmware",
        }
    }

    /// The single argument a hook of this style is run with for `op`.
    pub fn arg(self, op: HookOp) -> &'static str {
        match (self, op) {
            (_, HookOp::Freeze) => "freeze",
            (_, HookOp::Thaw) => "thaw",
            (HookStyle::Native, HookOp::Abort) => "abort",
            (HookStyle::QemuGa, HookOp::Abort) => "thaw",
            (HookStyle::Vmware, HookOp::Abort) => "freezeFail",
        }
    }
}

impl fmt::Display for HookStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hook style name that is none of `native`, `qemu-ga`, `vmware`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hook style {0:?} (expected native, qemu-ga or vmware)")]
pub struct UnknownStyle(pub String);

impl FromStr for HookStyle {
    type Err = UnknownStyle;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "native" => Ok(HookStyle::Native),
            "qemu-ga" => Ok(HookStyle::QemuGa),
            "vmware" => Ok(HookStyle::Vmware),
            other => Err(UnknownStyle(other.to_owned())),
        }
    }
}

/// The operation hooks are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookOp {
    /// Before the first FIFREEZE: flush and hold. A failure vetoes the backup.
    Freeze,
    /// After the last FITHAW of a backup whose freeze succeeded: resume.
    Thaw,
    /// Instead of thaw, when the backup failed after hooks were told to freeze: undo.
    Abort,
}

impl HookOp {
    /// `freeze`, `thaw` or `abort` (the native spelling, also used in logs).
    pub fn name(self) -> &'static str {
        HookStyle::Native.arg(self)
    }
}

impl fmt::Display for HookOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_per_style() {
        use HookOp::*;
        use HookStyle::*;
        let table = [
            (Native, ["freeze", "thaw", "abort"]),
            (QemuGa, ["freeze", "thaw", "thaw"]),
            (Vmware, ["freeze", "thaw", "freezeFail"]),
        ];
        for (style, args) in table {
            assert_eq!([style.arg(Freeze), style.arg(Thaw), style.arg(Abort)], args);
        }
    }

    #[test]
    fn style_names_round_trip_through_serde_and_from_str() {
        for style in [HookStyle::Native, HookStyle::QemuGa, HookStyle::Vmware] {
            let json = format!("\"{}\"", style.name());
            assert_eq!(serde_json::from_str::<HookStyle>(&json).unwrap(), style);
            assert_eq!(style.name().parse::<HookStyle>().unwrap(), style);
        }
        assert!(serde_json::from_str::<HookStyle>("\"qemu_ga\"").is_err());
        assert!("VMware".parse::<HookStyle>().is_err());
    }
}
