//! FreeBSD's filesystem calls, re-exported through [`crate::fs`]: the mount table from
//! `getfsstat(2)` and one mount's `statfs(2)`, as [`MountStat`] records.
//!
//! # Kernel contract (sys/sys/mount.h, kern/vfs_syscalls.c)
//!
//! - `getfsstat(buf, bufsize, MNT_NOWAIT)` copies one `struct statfs` per mounted filesystem
//!   into `buf` (as many as `bufsize` holds) and returns how many it copied; with a null
//!   buffer it returns how many there are. `MNT_NOWAIT` returns the cached statistics
//!   without asking each filesystem, so a dead NFS server cannot hang it; the fields read
//!   here (type and names, flags, fsid) are not statistics and are always current.
//! - `getmntinfo(3)` is the same call into a buffer of libc's own that the next call
//!   overwrites; it is not used, so that two threads may read the table at once.
//! - `f_fsid` identifies the mounted filesystem for `UFSSUSPEND`; `f_flags` holds
//!   `MNT_RDONLY`, `MNT_LOCAL`, ...; the names are NUL-terminated in fixed arrays
//!   (`MFSNAMELEN` 16, `MNAMELEN` 1024 since FreeBSD 12).

use std::ffi::CStr;
use std::path::Path;

use hv_vss_protocol::freebsd::FsId;
use rustix::fs::OFlags;

/// FreeBSD has no `O_NOATIME`.
pub(crate) const NOATIME: OFlags = OFlags::empty();

/// The fields of one `struct statfs` that mount selection reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountStat {
    /// `f_fstypename`: `ufs`, `zfs`, `devfs`, ...
    pub fstypename: String,
    /// `f_mntonname`: the mount point.
    pub mntonname: String,
    /// `f_mntfromname`: the device, the dataset or (nullfs) the lower directory.
    pub mntfromname: String,
    /// `f_flags`.
    pub flags: u64,
    /// `f_fsid`, what `UFSSUSPEND` takes.
    pub fsid: FsId,
}

impl MountStat {
    fn from_raw(st: &libc::statfs) -> Self {
        // SAFETY: `fsid_t` is `#[repr(C)] struct { int32_t val[2]; }` in libc and in the
        // kernel, the same size and layout as `[i32; 2]` (transmute checks the size), and
        // every bit pattern is a valid `[i32; 2]`. libc keeps the field private, so this is
        // the only way to read it.
        let val = unsafe { std::mem::transmute::<libc::fsid_t, [i32; 2]>(st.f_fsid) };
        Self {
            fstypename: c_chars(&st.f_fstypename),
            mntonname: c_chars(&st.f_mntonname),
            mntfromname: c_chars(&st.f_mntfromname),
            flags: st.f_flags,
            fsid: FsId { val },
        }
    }
}

/// A NUL-terminated name in a fixed `c_char` array (the whole array if no NUL), with
/// bytes that are not UTF-8 replaced: the names are shown and compared, never opened
/// (suspension goes by fsid).
fn c_chars(raw: &[libc::c_char]) -> String {
    // c_char is i8 on x86_64 and u8 on aarch64: reinterpret the byte either way.
    let bytes: Vec<u8> = raw
        .iter()
        .map(|c| u8::from_ne_bytes(c.to_ne_bytes()))
        .collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Every mounted filesystem, in mount order (`getfsstat(MNT_NOWAIT)`).
#[doc(alias = "getfsstat")]
#[doc(alias = "getmntinfo")]
pub fn mount_table() -> std::io::Result<Vec<MountStat>> {
    loop {
        // SAFETY: with a null buffer and size 0 getfsstat writes nothing and only counts.
        let count = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
        if count < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Room for a few mounts made between the two calls; a full buffer means the table
        // may have grown past it, and it is read again.
        let capacity = count as usize + 8;
        let mut buf: Vec<libc::statfs> = Vec::with_capacity(capacity);
        let bytes = capacity * std::mem::size_of::<libc::statfs>();
        // SAFETY: `buf` owns room for `capacity` records and `bytes` says exactly that much;
        // getfsstat writes at most `bytes / sizeof(struct statfs)` whole records there.
        let got =
            unsafe { libc::getfsstat(buf.as_mut_ptr(), bytes as libc::c_long, libc::MNT_NOWAIT) };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let got = got as usize;
        if got >= capacity {
            continue;
        }
        // SAFETY: the kernel initialized the first `got` records (its return value), and
        // `got < capacity`.
        unsafe { buf.set_len(got) };
        return Ok(buf.iter().map(MountStat::from_raw).collect());
    }
}

/// `statfs(path)`: the mount `path` lives on.
pub fn statfs_path(path: &Path) -> std::io::Result<MountStat> {
    let st = rustix::fs::statfs(path)?;
    Ok(MountStat::from_raw(&st))
}
