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
