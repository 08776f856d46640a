//! Logging: `tracing` with `RUST_LOG` respected (default `info`). Each request runs in a DEBUG
//! span carrying its request id (the `x-request-id` header, generated when absent): with
//! `RUST_LOG=debug` (or `flashsale_server=debug`) every line logged while serving a request
//! names it; at the default level the span is not even created (it cost an eighth of a status
//! read). Instants are RFC 3339 in UTC, like the API's.

use std::fmt;
use std::io::IsTerminal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), which
/// lets every test call it.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_timer(Rfc3339Utc)
        // Colour codes only help people at a terminal; they garble files and log collectors.
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}

/// Each line's instant as RFC 3339 in UTC (`2026-11-30T00:18:57.934099Z`).
#[derive(Debug, Clone, Copy)]
struct Rfc3339Utc;

impl FormatTime for Rfc3339Utc {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_rfc3339(w, OffsetDateTime::now_utc())
    }
}

fn write_rfc3339(w: &mut impl fmt::Write, at: OffsetDateTime) -> fmt::Result {
    let text = at.format(&Rfc3339).map_err(|_| fmt::Error)?;
    w.write_str(&text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn log_instants_are_rfc_3339_in_utc() {
        let mut out = String::new();
        write_rfc3339(
            &mut out,
            time::macros::datetime!(2026-11-30 0:18:57.934099 UTC),
        )
        .unwrap();
        assert_eq!(out, "2026-11-30T00:18:57.934099Z");
        assert!(OffsetDateTime::parse(&out, &Rfc3339).is_ok());
    }
}
