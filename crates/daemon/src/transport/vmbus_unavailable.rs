//! Linux's VMBus transports (`/dev/vmbus/hv_vss`, UIO) where they do not exist: the same
//! names as `vmbus.rs`, as types without values, so [`super::Transport`] and
//! [`super::Reopener`] have one shape on every platform. Choosing `device` or `uio` on such
//! a platform is refused by the config (`crate::config::Platform`); opening one anyway
//! fails with [`VmbusError::Unsupported`].

use std::fmt;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use hv_vss_core::Status;

use super::{Delivery, Incoming, ReopenStep, Transport, TransportError};
use crate::config::TransportChoice;

/// A failure of a VMBus transport: here, only that there is none.
#[derive(Debug, thiserror::Error)]
pub enum VmbusError {
    /// This platform has no `/dev/vmbus/hv_vss` and no UIO.
    #[error("{}: the VMBus transports exist only on Linux", .0.display())]
    Unsupported(PathBuf),
}

impl VmbusError {
    /// Never: nothing was opened.
    pub fn requires_reopen(&self) -> bool {
        false
    }

    /// Never.
    pub fn is_busy(&self) -> bool {
        false
    }
}

/// No VMBus transport on this platform.
#[derive(Debug)]
pub enum VmbusTransport {}

impl VmbusTransport {
    /// Fails: no drop-in device here.
    pub fn open_drop_in(path: &Path) -> Result<Transport, TransportError> {
        Err(VmbusError::Unsupported(path.to_path_buf()).into())
    }

    /// Fails: no UIO here.
    pub fn open_uio(path: &Path) -> Result<Transport, TransportError> {
        Err(VmbusError::Unsupported(path.to_path_buf()).into())
    }

    pub fn negotiated(
        &self,
    ) -> Option<(hv_vss_protocol::ic::Version, hv_vss_protocol::ic::Version)> {
        match *self {}
    }

    pub fn wants_service(&self) -> bool {
        match *self {}
    }

    pub fn recv(&mut self) -> Result<Vec<Incoming>, TransportError> {
        match *self {}
    }

    pub fn reply(&mut self, _: u64, _: Status) -> Result<Delivery, TransportError> {
        match *self {}
    }

    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match *self {}
    }
}

/// No UIO device to find again.
#[derive(Debug)]
pub enum UioRediscovery {}

impl UioRediscovery {
    pub fn step(&mut self, _may_bind: bool) -> ReopenStep {
        match *self {}
    }
}

/// No rediscovery step to wait for.
#[derive(Debug)]
pub enum Waiting {}

impl Waiting {
    pub fn kind(&self) -> &'static str {
        match *self {}
    }

    pub fn check_soon(&self) -> bool {
        match *self {}
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

/// Never: every transport here is reopened as configured.
pub fn rediscovery_for(_: &TransportChoice) -> Option<Box<UioRediscovery>> {
    None
}
