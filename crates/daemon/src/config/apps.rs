//! The `[apps]` table and the `[[hooks]]` directories, resolved into the settings of the
//! application socket and of each hook participant.

use super::*;

/// One hook directory: one coordinator participant named `hooks:<dir>`.
#[derive(Debug, Clone, PartialEq)]
pub struct HookDirSettings {
    pub dir: PathBuf,
    pub style: HookStyle,
    pub tier: u8,
    /// Per-hook timeout (the process group is killed after it).
    pub timeout: Duration,
}

/// Default `[apps] max_clients`.
pub const DEFAULT_MAX_CLIENTS: usize = 256;
/// Default `[apps] max_pending_bytes`: bytes queued to a client that does not read.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 1024 * 1024;
/// Default `[apps] socket_mode` when only root may take part.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default `[apps] socket_mode` when `allowed_users` or `allowed_groups` name anyone: any
/// user may connect, and the peer-credential check refuses who is not allowed.
pub const OPEN_SOCKET_MODE: u32 = 0o666;

/// The application socket, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    pub socket: PathBuf,
    /// Permission bits of the socket file.
    pub mode: u32,
    /// chown after bind; None keeps the daemon's own.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    /// Besides root (uid 0), who may connect: by uid, or by any group of the peer.
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    pub max_clients: usize,
    pub max_pending_bytes: usize,
}

pub(super) fn resolve_apps(file: &FileApps, socket: PathBuf) -> Result<AppSettings, ConfigError> {
    use crate::apps::accounts::{Kind, resolve};
    let others_allowed = file.allowed_users.as_ref().is_some_and(|v| !v.is_empty())
        || file.allowed_groups.as_ref().is_some_and(|v| !v.is_empty());
    let mode = match &file.socket_mode {
        // Whoever is allowed must be able to connect(2), which needs write permission on
        // the socket file; the kernel's peer credentials then decide (apps.md).
        None if others_allowed => OPEN_SOCKET_MODE,
        None => DEFAULT_SOCKET_MODE,
        Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                invalid(
                    "apps.socket_mode",
                    format!("{text:?} is not an octal mode such as \"0660\""),
                )
            })?,
    };
    let one = |key: &str, kind: Kind, v: &Option<IdOrName>| -> Result<Option<u32>, ConfigError> {
        v.as_ref()
            .map(|v| resolve(kind, v).map_err(|e| invalid(key, e)))
            .transpose()
    };
    let many =
        |key: &str, kind: Kind, v: &Option<Vec<IdOrName>>| -> Result<Vec<u32>, ConfigError> {
            v.iter()
                .flatten()
                .map(|v| resolve(kind, v).map_err(|e| invalid(key, e)))
                .collect()
        };
    let positive = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(AppSettings {
        socket,
        mode,
        owner: one("apps.socket_owner", Kind::User, &file.socket_owner)?,
        group: one("apps.socket_group", Kind::Group, &file.socket_group)?,
        allowed_uids: many("apps.allowed_users", Kind::User, &file.allowed_users)?,
        allowed_gids: many("apps.allowed_groups", Kind::Group, &file.allowed_groups)?,
        max_clients: positive("apps.max_clients", file.max_clients, DEFAULT_MAX_CLIENTS)?,
        max_pending_bytes: positive(
            "apps.max_pending_bytes",
            file.max_pending_bytes,
            DEFAULT_MAX_PENDING_BYTES,
        )?,
    })
}

/// `[[hooks]]`, or the default directory if it exists and none is configured.
pub(super) fn resolve_hooks(
    file: Option<Vec<FileHookDir>>,
) -> Result<Vec<HookDirSettings>, ConfigError> {
    let Some(entries) = file else {
        let dir = PathBuf::from(HookDir::DEFAULT_PATH);
        return Ok(if dir.is_dir() {
            vec![HookDirSettings {
                dir,
                style: HookStyle::Native,
                tier: hv_vss_core::DEFAULT_TIER,
                timeout: HookDir::DEFAULT_TIMEOUT,
            }]
        } else {
            Vec::new()
        });
    };
    let mut out: Vec<HookDirSettings> = Vec::new();
    for e in entries {
        let dir = absolute("hooks.dir", e.dir)?;
        if out.iter().any(|h| h.dir == dir) {
            return Err(invalid(
                "hooks.dir",
                format!("{} is listed twice", dir.display()),
            ));
        }
        let style = match e.style.as_deref() {
            None => HookStyle::Native,
            Some(s) => s
                .parse()
                .map_err(|e: hv_vss_hooks::UnknownStyle| invalid("hooks.style", e.to_string()))?,
        };
        let timeout = match e.timeout_secs {
            None => HookDir::DEFAULT_TIMEOUT,
            Some(v) => seconds("hooks.timeout_secs", v)?,
        };
        out.push(HookDirSettings {
            dir,
            style,
            tier: e.tier.unwrap_or(hv_vss_core::DEFAULT_TIER),
            timeout,
        });
    }
    Ok(out)
}
