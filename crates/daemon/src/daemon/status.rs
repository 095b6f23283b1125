//! The answer of the control socket ([`crate::control`]): what the loop knows right now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Daemon;
use crate::config::TransportChoice;
use crate::control::{AppInfo, StatusAnswer};

impl Daemon {
    /// Serves the control socket's waiting clients.
    pub(super) fn on_control_readable(&mut self) {
        if let Some(mut control) = self.control.take() {
            control.serve(|| self.status_answer());
            self.control = Some(control);
        }
    }

    fn status_answer(&self) -> StatusAnswer {
        let (mode, transport) = match &self.settings.transport {
            TransportChoice::DropIn(p) => ("drop-in", p.display().to_string()),
            TransportChoice::Uio(p) => ("uio", p.display().to_string()),
            TransportChoice::FsVss(p) => ("hv_fsvss_dev", p.display().to_string()),
        };
        let state = format!("{:?}", self.coord.state_kind());
        // StateKind's names in snake case, as the reports write them.
        let state = state
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                sep.into_iter()
                    .chain(std::iter::once(c.to_ascii_lowercase()))
            })
            .collect();
        let deadline_unix_ms = self.coord.next_deadline().map(|d| {
            let left = Duration::from_millis(d.since(self.now()));
            (SystemTime::now() + left)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
        });
        StatusAnswer {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            mode,
            transport,
            transport_up: self.transport.is_some(),
            negotiated: self.transport.as_ref().and_then(|t| t.negotiated()).map(
                |(framework, message)| {
                    serde_json::json!({
                        "framework": framework.to_string(),
                        "message": message.to_string(),
                    })
                },
            ),
            state,
            frozen: self.safety.is_frozen(),
            deadline_unix_ms,
            apps: self
                .coord
                .participants()
                .map(|(_, name, tier)| AppInfo {
                    name: name.to_string(),
                    tier,
                })
                .collect(),
            log_lines_dropped: self.safety.log_lines_dropped(),
        }
    }
}
