//! SIGTERM and SIGINT (R63): a self-pipe the loop polls; on the first signal the
//! coordinator ends its work (thaw, E_FAIL to a pending request) and the transport closes.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use hv_vss_core::Event;

use super::Daemon;

/// Registers SIGTERM and SIGINT to write a byte to a socket the loop polls (R63); returns
/// the end to poll.
pub fn signal_pipe() -> std::io::Result<UnixStream> {
    let (read, write) = UnixStream::pair()?;
    read.set_nonblocking(true)?;
    write.set_nonblocking(true)?;
    let write_fd: OwnedFd = write.into();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let dup = write_fd.try_clone()?;
        signal_hook::low_level::pipe::register(sig, dup)?;
    }
    Ok(read)
}

impl Daemon {
    pub(super) fn on_signal(&mut self) {
        let mut buf = [0u8; 64];
        let _ = rustix::io::read(&self.signals, &mut buf);
        if self.stopping {
            tracing::info!("signal received while stopping; still thawing");
            return;
        }
        self.stopping = true;
        self.reopen_at = None;
        tracing::info!("SIGTERM/SIGINT: thawing, answering E_FAIL, closing the transport");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.queue.push_back(Event::Shutdown);
        self.pump();
        // R63: close the transport at once (unbinding hv_utils waits for it); the reply to
        // a pending request went out in the batch above.
        self.transport = None;
    }
}
