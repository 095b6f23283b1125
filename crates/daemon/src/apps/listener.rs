//! The listening socket and who may connect to it.
//!
//! # Mechanism
//!
//! A Unix stream socket at the configured path: the parent directory is created (0755) if
//! missing; a socket file left by a dead daemon is removed (a connect to it is refused),
//! while one that still answers means another daemon serves it (start-up fails) and any
//! other kind of file is never removed. The socket is bound, given its mode and owner
//! (`chmod`/`chown` before `listen`, so nobody connects through wider permissions), then
//! listens; accept is non-blocking and close-on-exec.
//!
//! Credentials come from the kernel (`SO_PEERCRED` on Linux, `LOCAL_PEERCRED` on FreeBSD:
//! the peer's uid, gid and pid when it connected, through [`hv_vss_sys::peer`]), never
//! from the client: root, a uid in `allowed_users`, or a process whose primary or
//! supplementary group (FreeBSD: in the credentials; Linux: `/proc/<pid>/status`) is in
//! `allowed_groups` may take part. The socket's file mode is a first gate; this check holds even with mode 0666.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::fs::{Gid, Mode, Uid};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::accounts;
use crate::config::AppSettings;

/// How many connections may wait in the kernel for `accept`.
const BACKLOG: i32 = 128;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: another process is listening on it (another hv-vssd?)")]
    InUse { path: String },
    #[error("{path}: exists and is not a socket; not removing it")]
    NotASocket { path: String },
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Who connected, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// None where the kernel does not record it (FreeBSD before 13).
    pub pid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// The groups that came with the credentials (FreeBSD); None: look them up by pid.
    pub groups: Option<Vec<u32>>,
}

impl Peer {
    /// From the kernel's record of the peer of `socket`.
    pub fn of(socket: impl AsFd) -> io::Result<Self> {
        let cred = hv_vss_sys::peer::peer_credentials(socket)?;
        Ok(Self {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            groups: cred.groups,
        })
    }

    /// Whether `gid` is the peer's primary or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid
            || match &self.groups {
                Some(groups) => groups.contains(&gid),
                None => self
                    .pid
                    .is_some_and(|pid| accounts::supplementary_groups(pid).contains(&gid)),
            }
    }
}

/// The bound, listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    allowed_uids: Vec<u32>,
    allowed_gids: Vec<u32>,
}

impl Listener {
    /// Creates the socket as configured. See the module documentation.
    pub fn bind(settings: &AppSettings) -> Result<Self, ListenError> {
        let path = &settings.socket;
        let shown = path.display().to_string();
        let io_err = |what: &'static str| {
            let shown = shown.clone();
            move |source: io::Error| ListenError::Io {
                path: shown,
                what,
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("creating its directory"))?;
        }
        remove_stale(path)?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io_err("socket")(e.into()))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| io_err("address")(e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| io_err("bind")(e.into()))?;
        rustix::fs::chmod(
            path,
            Mode::from_bits_truncate(settings.mode as rustix::fs::RawMode),
        )
        .map_err(|e| io_err("chmod")(e.into()))?;
        if settings.owner.is_some() || settings.group.is_some() {
            rustix::fs::chown(
                path,
                settings.owner.map(Uid::from_raw),
                settings.group.map(Gid::from_raw),
            )
            .map_err(|e| io_err("chown")(e.into()))?;
        }
        rustix::net::listen(&fd, BACKLOG).map_err(|e| io_err("listen")(e.into()))?;
        Ok(Self {
            fd,
            allowed_uids: settings.allowed_uids.clone(),
            allowed_gids: settings.allowed_gids.clone(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next waiting connection (non-blocking, close-on-exec) and its peer; `Ok(None)`
    /// when none waits.
    pub fn accept(&self) -> io::Result<Option<(UnixStream, Peer)>> {
        let fd = match rustix::net::accept_with(
            &self.fd,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return Ok(None),
            // The peer gave up before we accepted: nothing to serve.
            Err(rustix::io::Errno::CONNABORTED) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let peer = Peer::of(&fd)?;
        Ok(Some((UnixStream::from(fd), peer)))
    }

    /// Whether `peer` may take part: root, an allowed user, or a member of an allowed group.
    pub fn admits(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || self.allowed_uids.contains(&peer.uid) {
            return true;
        }
        self.allowed_gids.iter().any(|g| peer.in_group(*g))
    }
}

/// Removes a socket file nobody listens on; refuses a live socket or any other file.
fn remove_stale(path: &Path) -> Result<(), ListenError> {
    let shown = path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Io {
                path: shown,
                what: "stat",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket { path: shown });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ListenError::InUse { path: shown }),
        Err(_) => std::fs::remove_file(path).map_err(|source| ListenError::Io {
            path: shown,
            what: "removing the stale socket",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(dir: &Path) -> AppSettings {
        AppSettings {
            socket: dir.join("sub/app.sock"),
            mode: 0o640,
            owner: None,
            group: None,
            allowed_uids: vec![1234],
            allowed_gids: vec![4321],
            max_clients: 4,
            max_pending_bytes: 1024,
        }
    }

    #[test]
    fn binds_with_its_mode_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let l = Listener::bind(&s).unwrap();
        let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        // A live socket is not taken over.
        assert!(matches!(Listener::bind(&s), Err(ListenError::InUse { .. })));
        let _c = UnixStream::connect(&s.socket).unwrap();
        let (_, peer) = l.accept().unwrap().unwrap();
        assert_eq!(peer.pid, Some(std::process::id()));
        drop(l);
        // The file stays behind, stale: the next bind replaces it.
        assert!(s.socket.exists());
        let _l = Listener::bind(&s).unwrap();
        // Any other file is left alone.
        let other = AppSettings {
            socket: dir.path().join("plain"),
            ..s
        };
        std::fs::write(&other.socket, b"x").unwrap();
        assert!(matches!(
            Listener::bind(&other),
            Err(ListenError::NotASocket { .. })
        ));
    }

    #[test]
    fn the_socket_gets_the_configured_owner_and_group() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let s = AppSettings {
            owner: Some(65534),
            group: Some(65533),
            ..settings(dir.path())
        };
        let _l = Listener::bind(&s).unwrap();
        let meta = std::fs::metadata(&s.socket).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65533));
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn admits_root_and_what_is_allowed_only() {
        let dir = tempfile::tempdir().unwrap();
        let l = Listener::bind(&settings(dir.path())).unwrap();
        let peer = |uid, gid| Peer {
            pid: None,
            uid,
            gid,
            groups: None,
        };
        assert!(l.admits(&peer(0, 0)));
        assert!(l.admits(&peer(1234, 1)));
        assert!(l.admits(&peer(99, 4321)));
        assert!(!l.admits(&peer(99, 1)));
    }

    /// FreeBSD's credentials carry the groups; Linux's carry a pid whose groups are read
    /// from /proc. Either way a supplementary group admits.
    #[test]
    fn a_supplementary_group_admits_from_the_credentials_or_from_proc() {
        let dir = tempfile::tempdir().unwrap();
        let l = Listener::bind(&settings(dir.path())).unwrap();
        let freebsd = Peer {
            pid: None,
            uid: 99,
            gid: 1,
            groups: Some(vec![1, 7, 4321]),
        };
        assert!(l.admits(&freebsd));
        assert!(!l.admits(&Peer {
            groups: Some(vec![1, 7]),
            ..freebsd.clone()
        }));
        // This process, by pid: its own supplementary groups from /proc.
        let me = Peer::of(UnixStream::pair().unwrap().0).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(me.groups, None);
        }
        for g in accounts::supplementary_groups(std::process::id()) {
            assert!(me.in_group(g), "group {g}");
        }
        assert!(me.in_group(me.gid));
    }
}
