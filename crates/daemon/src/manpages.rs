//! `hv-vssd --generate-man DIR` (hidden, for packaging): hv-vssd(8) from the clap
//! definition, and hv-vss.toml(5) from the shipped example configuration, which documents
//! every key the daemon accepts (tests/example_config.rs checks that it lists exactly
//! those keys).

use std::fmt::Write as _;
use std::path::Path;

/// The shipped example configuration.
const EXAMPLE_CONFIG: &str = include_str!("../../../dist/hv-vss.toml");

/// Writes `DIR/hv-vssd.8` and `DIR/hv-vss.toml.5`.
pub fn generate(dir: &Path, cmd: clap::Command) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).section("8").render(&mut page)?;
    std::fs::write(dir.join("hv-vssd.8"), page)?;
    std::fs::write(dir.join("hv-vss.toml.5"), config_page(EXAMPLE_CONFIG))
}

/// Escapes text for roff: backslashes, and a leading `.` or `'` (a request).
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The example configuration as a man page: the header comment is the description; each
/// commented-out `key = value` line is an entry, described by the comment above it;
/// `[table]` lines are sections.
fn config_page(example: &str) -> String {
    let mut page = String::from(
        ".TH HV\\-VSS.TOML 5 \"\" \"hv-vss\" \"File Formats\"\n\
         .SH NAME\n\
         hv\\-vss.toml \\- configuration of hv\\-vssd, the Hyper\\-V VSS backup quiesce daemon\n\
         .SH SYNOPSIS\n\
         /etc/hv\\-vss/hv\\-vss.toml\n\
         .SH DESCRIPTION\n",
    );
    let mut blocks = example.split("\n\n");
    if let Some(header) = blocks.next() {
        for line in header.lines().skip(1) {
            let _ = writeln!(page, "{}", roff(line.trim_start_matches('#').trim()));
        }
    }
    page.push_str(".SH KEYS\n");
    for block in blocks {
        let mut text = Vec::new();
        for line in block.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                let _ = writeln!(page, ".SS {}", roff(line));
            } else if let Some(rest) = line.strip_prefix('#') {
                let rest = rest.trim();
                let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                });
                if is_key {
                    let _ = writeln!(page, ".TP\n\\fB{}\\fR", roff(rest));
                    for t in text.drain(..) {
                        let _ = writeln!(page, "{}", roff(t));
                    }
                } else {
                    text.push(rest);
                }
            }
        }
        if !text.is_empty() {
            let _ = writeln!(page, ".PP");
            for t in text {
                let _ = writeln!(page, "{}", roff(t));
            }
        }
    }
    page.push_str(".SH SEE ALSO\nhv\\-vssd(8), hv\\-vss(1)\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the example is an entry of the page.
    #[test]
    fn every_example_key_is_an_entry() {
        let page = config_page(EXAMPLE_CONFIG);
        for key in [
            "device",
            "uio",
            "state_dir",
            "history_limit",
            "metrics_textfile",
            "check_deadline_seconds",
            "on_unsupported",
        ] {
            assert!(
                page.contains(&format!(".TP\n\\fB{key} = ")),
                "{key} missing:\n{page}"
            );
        }
        assert!(page.contains(".SS [limits]"), "{page}");
        assert!(
            !page
                .lines()
                .any(|l| l.starts_with('.') && l.len() > 1 && l.as_bytes()[1] == b' ')
        );
    }
}
