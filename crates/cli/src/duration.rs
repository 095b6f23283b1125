//! Duration arguments of the command line (`--hold`, `--reply-timeout`): one parser, each
//! argument with its own upper bound.
//!
//! Syntax is `humantime`'s (`0`, `500ms`, `2s`, `1.5s`, `1m`, `1h 30m`), plus a bare number
//! of seconds (`3`, `0.25`), which both earlier hand-written parsers accepted.
//!
//! # Design
//!
//! Every duration gets a maximum before it is returned: callers add it to `Instant::now()`
//! or sleep for it, and `Instant + Duration` panics on overflow (`--hold
//! 10000000000000000000` once panicked with everything frozen). Errors are `String`s, the
//! form clap's `value_parser` prints after `invalid value 'X' for '--flag'`.

use std::time::Duration;

/// Longest `--hold` of `hv-vss freeze` and `hv-vss simulate`: everything stays frozen
/// meanwhile; anything longer is a typo.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Longest `--reply-timeout` of `hv-vss simulate`: the real host gives up on a reply within
/// minutes; an hour is already generous for a debugger attached to the guest.
pub const MAX_REPLY_TIMEOUT: Duration = Duration::from_secs(3600);

/// Parses a duration of at most `max`; `what` names the argument in messages.
pub fn parse_at_most(text: &str, max: Duration, what: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let parsed = if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        // A bare number: seconds. Digits and dots only, so "inf", "NaN" and "1e3" never
        // reach the float parser.
        trimmed
            .parse::<f64>()
            .map_err(|e| e.to_string())
            .and_then(|secs| Duration::try_from_secs_f64(secs).map_err(|e| e.to_string()))
    } else {
        humantime::parse_duration(trimmed).map_err(|e| e.to_string())
    };
    let duration = parsed.map_err(|reason| {
        format!(
            "{text:?} is not a duration ({reason}); write e.g. 500ms, 2s, 1m, 1h 30m, or a \
             number of seconds"
        )
    })?;
    if duration > max {
        return Err(format!(
            "{what} {text:?} is longer than the maximum of {}",
            in_largest_unit(max)
        ));
    }
    Ok(duration)
}

/// `max` as the user would write it: `24h` (humantime would print `1day`), `90s`, `250ms`.
fn in_largest_unit(max: Duration) -> String {
    let ms = max.as_millis();
    match ms {
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// `--hold`: at most [`MAX_HOLD`].
pub fn parse_hold(text: &str) -> Result<Duration, String> {
    parse_at_most(text, MAX_HOLD, "hold").map_err(|e| {
        if e.contains("maximum") {
            format!("{e} (everything stays frozen meanwhile)")
        } else {
            e
        }
    })
}

/// `--reply-timeout`: more than zero, at most [`MAX_REPLY_TIMEOUT`].
pub fn parse_reply_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_at_most(text, MAX_REPLY_TIMEOUT, "reply timeout")?;
    if timeout.is_zero() {
        return Err(format!(
            "reply timeout {text:?} is zero: every request would time out at once"
        ));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn units_compounds_and_bare_seconds() {
        let day = S(24 * 3600);
        for (text, want) in [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("250ms", MS(250)),
            ("1.5s", MS(1500)),
            ("2s", S(2)),
            ("2m", S(120)),
            ("2min", S(120)),
            ("1h", S(3600)),
            ("1h 30m", S(5400)),
            ("1h30m", S(5400)),
            ("3", S(3)),
            ("1.5", MS(1500)),
            (" 10ms ", MS(10)),
            ("24h", day),
        ] {
            assert_eq!(parse_at_most(text, day, "x"), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn garbage_is_not_a_duration_and_says_what_to_write() {
        for text in [
            "",
            "soon",
            "5 parsecs",
            "-1s",
            "1e3",
            "inf",
            "NaN",
            ".",
            "1..2",
            "ms",
            "3 h x",
        ] {
            let err = parse_at_most(text, MAX_HOLD, "hold").expect_err(text);
            assert!(err.contains("is not a duration"), "{text:?}: {err}");
            assert!(err.contains("500ms, 2s, 1m"), "{text:?}: {err}");
        }
    }

    /// Regression: `--hold 10000000000000000000` parsed, and then `Instant::now() + hold`
    /// panicked with everything frozen. Every duration is bounded before it is returned.
    #[test]
    fn absurd_holds_are_refused_with_a_clear_message() {
        assert_eq!(parse_hold("24h"), Ok(MAX_HOLD));
        assert_eq!(parse_hold("500ms"), Ok(MS(500)));
        for text in ["10000000000000000000", "25h", "1441m", "24h 1s", "2d", "1y"] {
            let err = parse_hold(text).expect_err(text);
            assert!(err.contains("maximum of 24h"), "{err}");
            assert!(err.contains("frozen"), "{err}");
        }
        // Too large for any clock: refused as a number, never a panic.
        for text in [
            "99999999999999999999999h",
            "1e400",
            "99999999999999999999999",
        ] {
            assert!(parse_hold(text).is_err(), "{text}");
        }
    }

    #[test]
    fn maxima_are_named_as_a_user_writes_them() {
        assert_eq!(in_largest_unit(MAX_HOLD), "24h");
        assert_eq!(in_largest_unit(S(90)), "90s");
        assert_eq!(in_largest_unit(S(120)), "2m");
        assert_eq!(in_largest_unit(MS(250)), "250ms");
        let err = parse_at_most("3m", S(90), "wait").unwrap_err();
        assert_eq!(err, "wait \"3m\" is longer than the maximum of 90s");
    }

    #[test]
    fn reply_timeouts_are_bounded_and_not_zero() {
        assert_eq!(parse_reply_timeout("30s"), Ok(S(30)));
        assert_eq!(parse_reply_timeout("1h"), Ok(MAX_REPLY_TIMEOUT));
        let err = parse_reply_timeout("2h").unwrap_err();
        assert!(err.contains("maximum of 1h"), "{err}");
        let err = parse_reply_timeout("0").unwrap_err();
        assert!(err.contains("zero"), "{err}");
    }

    #[test]
    fn every_accepted_duration_can_be_added_to_now() {
        let now = std::time::Instant::now();
        for text in ["24h", "86400", "86399.999999999"] {
            let d = parse_hold(text).unwrap();
            assert!(now.checked_add(d).is_some(), "{text}");
        }
    }
}
