//! No panic message or backtrace ever reaches the user: a panic becomes one line and an exit
//! code, after unwinding (so every guard still runs its Drop: a freeze self-test thaws).
//!
//! The common one is not a bug: Rust ignores SIGPIPE, so printing to a pipe whose reader
//! has gone (`hv-vss plan | head -1`) makes `println!` panic with "failed printing to
//! stdout". That ends the command quietly with 141, the status a shell reports for a
//! process killed by SIGPIPE. Anything else is an internal error: one line, exit 1.

use std::process::ExitCode;

/// 128 + SIGPIPE.
pub const BROKEN_PIPE: u8 = 141;

/// Runs `body`, turning a panic into a one-line message and an exit code.
pub fn guard(body: fn() -> ExitCode) -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        if !is_broken_pipe(message) {
            let place = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
            eprintln!("hv-vss: internal error{place}: {message} (please report it)");
        }
    }));
    match std::panic::catch_unwind(body) {
        Ok(code) => code,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if is_broken_pipe(message) {
                ExitCode::from(BROKEN_PIPE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_broken_pipe(message: &str) -> bool {
    message.contains("failed printing to std") && message.contains("Broken pipe")
}
