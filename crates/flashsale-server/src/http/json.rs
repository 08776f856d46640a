//! Hand-written JSON for the two hottest bodies (a sale's status and a confirmed order): the
//! same bytes `serde_json` writes for their `Serialize` types (property tests hold them equal),
//! without escaping every key and allocating for every instant, which was a sixth of a status
//! read's work (issue 15). Everything else goes through serde.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A JSON body being written, with room for the usual size.
pub struct JsonBuf(Vec<u8>);

impl JsonBuf {
    /// An empty body with `capacity` bytes reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Appends bytes that are already JSON (punctuation, keys, literals).
    pub fn raw(&mut self, json: &[u8]) -> &mut Self {
        self.0.extend_from_slice(json);
        self
    }

    /// Appends a string, quoted and escaped as serde_json escapes it.
    pub fn string(&mut self, s: &str) -> &mut Self {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, s);
        self
    }

    /// Appends an integer.
    pub fn number(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.0
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    /// Appends an RFC 3339 instant in quotes, or `null`, as `time::serde::rfc3339` writes it.
    pub fn instant(&mut self, at: Option<OffsetDateTime>) -> &mut Self {
        let Some(at) = at else {
            return self.raw(b"null");
        };
        if let Some(utc) = Rfc3339Utc::of(at) {
            return self.raw(utc.as_bytes());
        }
        let mark = self.0.len();
        self.0.push(b'"');
        // Only years outside 0..=9999 fail to format; no sale or clock gets there, but if one
        // did, the body says `null` rather than a broken string.
        if at.format_into(&mut self.0, &Rfc3339).is_err() {
            self.0.truncate(mark);
            return self.raw(b"null");
        }
        self.raw(b"\"")
    }

    /// The body.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.0)
    }

    /// The body as an `application/json` response with `status`.
    pub fn into_response(self, status: axum::http::StatusCode) -> Response {
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.into_bytes(),
        )
            .into_response()
    }
}

/// A UTC instant of years 0..=9999 written as `time`'s `Rfc3339` writes it, quotes included,
/// in one fixed buffer: every instant the service writes is one of these, and `time`'s
/// general formatter (its offset checks and one small write per component) was about a
/// twentieth of a status read's instructions, with three instants per body (issue 15).
struct Rfc3339Utc {
    bytes: [u8; 32],
    len: usize,
}

impl Rfc3339Utc {
    /// `None` for an offset other than UTC or a year outside 0..=9999 (the general formatter
    /// takes those).
    fn of(at: OffsetDateTime) -> Option<Self> {
        if !at.offset().is_utc() || !(0..10_000).contains(&at.year()) {
            return None;
        }
        let (year, month, day) = at.to_calendar_date();
        let (hour, minute, second, nanos) = at.to_hms_nano();
        let mut bytes = *b"\"0000-00-00T00:00:00.000000000Z\"";
        let year = year as u32;
        two_digits(&mut bytes[1..3], year / 100);
        two_digits(&mut bytes[3..5], year % 100);
        two_digits(&mut bytes[6..8], u32::from(u8::from(month)));
        two_digits(&mut bytes[9..11], u32::from(day));
        two_digits(&mut bytes[12..14], u32::from(hour));
        two_digits(&mut bytes[15..17], u32::from(minute));
        two_digits(&mut bytes[18..20], u32::from(second));
        let mut len = 20;
        if nanos != 0 {
            // The fraction's digits without its trailing zeros, as `time` writes them.
            let mut digits = 9;
            let mut rest = nanos;
            while rest % 10 == 0 {
                rest /= 10;
                digits -= 1;
            }
            let mut n = nanos;
            for slot in bytes[21..30].iter_mut().rev() {
                *slot = b'0' + (n % 10) as u8;
                n /= 10;
            }
            len = 21 + digits;
        }
        bytes[len] = b'Z';
        bytes[len + 1] = b'"';
        Some(Self {
            bytes,
            len: len + 2,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes `n` (below 100) as two digits.
fn two_digits(slot: &mut [u8], n: u32) {
    slot[0] = b'0' + (n / 10) as u8;
    slot[1] = b'0' + (n % 10) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::UtcOffset;

    /// What `time`'s own formatter writes for `at`, quoted, or `null`.
    fn by_time(at: OffsetDateTime) -> String {
        match at.format(&Rfc3339) {
            Ok(text) => format!("\"{text}\""),
            Err(_) => "null".to_owned(),
        }
    }

    fn written(at: OffsetDateTime) -> String {
        let mut out = JsonBuf::with_capacity(40);
        out.instant(Some(at));
        String::from_utf8(out.0).unwrap()
    }

    /// A second's nanoseconds, with from none to nine trailing zeros.
    fn nanos() -> impl Strategy<Value = u32> {
        (0u32..1_000_000_000, 0u32..=9)
            .prop_map(|(n, zeros)| n / 10u32.pow(zeros) * 10u32.pow(zeros))
    }

    proptest! {
        #[test]
        fn a_utc_instant_is_written_as_time_writes_it(
            // Years -1..=9999: the year before 0 must say `null` both ways.
            seconds in -62_198_755_200i64..253_402_300_800,
            nanos in nanos(),
        ) {
            let at = OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                .replace_nanosecond(nanos).unwrap();
            prop_assert_eq!(written(at), by_time(at));
        }

        #[test]
        fn an_instant_at_another_offset_is_written_as_time_writes_it(
            seconds in 0i64..4_102_444_800,
            nanos in nanos(),
            offset_minutes in -1439i32..1440,
        ) {
            let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap();
            let at = OffsetDateTime::from_unix_timestamp(seconds).unwrap()
                .replace_nanosecond(nanos).unwrap().to_offset(offset);
            prop_assert_eq!(written(at), by_time(at));
        }
    }

    #[test]
    fn the_edges_of_the_fraction_and_the_years_are_written_as_time_writes_them() {
        let base = OffsetDateTime::from_unix_timestamp(1_764_633_600).unwrap();
        for nanos in [0, 1, 10, 100_000, 123_456_000, 500_000_000, 999_999_999] {
            let at = base.replace_nanosecond(nanos).unwrap();
            assert_eq!(written(at), by_time(at), "{nanos} ns");
        }
        for year in [0, 1, 999, 1000, 9999, -1, -9999] {
            let at = base.replace_year(year).unwrap();
            assert_eq!(written(at), by_time(at), "year {year}");
        }
        assert_eq!(written(base), "\"2025-12-02T00:00:00Z\"");
    }
}
