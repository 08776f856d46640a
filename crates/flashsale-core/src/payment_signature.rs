//! The payment webhook's signature (docs/requirements.md#9-checkout, CO-11): the header
//! `Flashsale-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, the
//! scheme payment providers use.
//!
//! It lives in the core, not in the server, because it is a pure rule with an injected clock
//! like the others, and two crates need the one statement of it: the server verifies, and the
//! load tool (and the tests) sign. HMAC and SHA-256 are the RustCrypto crates the server
//! already uses for session tokens (`hmac` 0.13, `sha2` 0.11): pure Rust, no I/O.
//!
//! Rules, in the order they are checked:
//! - no header: `signature_missing`;
//! - not `t=<1 to 18 digits>` exactly once and at least one `v1=<64 hex digits>`, as
//!   comma-separated `key=value` pairs (spaces around a pair allowed; other keys, such as a
//!   future `v2`, ignored): `signature_malformed`;
//! - no `v1` equal to the HMAC of `"<t as sent>.<body bytes>"`: `signature_mismatch`. Several
//!   `v1` are allowed so a shop can roll its secret (sign with old and new while instances
//!   change over); each is compared in constant time ([`hmac::Mac::verify_slice`]);
//! - `t` more than [`TOLERANCE`] before or after the server's clock, in whole seconds:
//!   `signature_stale`. Checked after the MAC, so "stale" is said only of an authentic event
//!   (a replay, or a clock far off), never of a forgery.
//!
//! Within the tolerance a replayed event is authentic: the order's transition answers it as
//! the first delivery (CO-7) and changes nothing.

use crate::checkout_outcome::CheckoutOutcome;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// The header's name.
pub const SIGNATURE_HEADER: &str = "Flashsale-Signature";

/// How far the signed time may be from the server's clock, either way.
pub const TOLERANCE: Duration = Duration::minutes(5);

/// Bytes in a SHA-256 MAC.
const MAC_LEN: usize = 32;

/// The longest `t` accepted, in digits: any `i64` of Unix seconds up to the year 33658.
const MAX_T_DIGITS: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook's signature was refused (401; nothing changes). Each names its
/// [`CheckoutOutcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureRejection {
    /// No `Flashsale-Signature` header.
    #[error("the Flashsale-Signature header is missing")]
    Missing,
    /// The header is not `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`.
    #[error("the Flashsale-Signature header must be t=<unix seconds>,v1=<64 hex digits>")]
    Malformed,
    /// The signed time is more than 5 minutes from the server's clock.
    #[error("the signature's time is more than 5 minutes from the server's clock")]
    Stale,
    /// No `v1` matches the body with the configured secret.
    #[error("no signature matches the body")]
    Mismatch,
}

impl SignatureRejection {
    /// The answer this rejection gets.
    pub fn outcome(self) -> CheckoutOutcome {
        match self {
            SignatureRejection::Missing => CheckoutOutcome::SignatureMissing,
            SignatureRejection::Malformed => CheckoutOutcome::SignatureMalformed,
            SignatureRejection::Stale => CheckoutOutcome::SignatureStale,
            SignatureRejection::Mismatch => CheckoutOutcome::SignatureMismatch,
        }
    }
}

/// The webhook secret was shorter than [`WebhookSecret::MIN_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the payment webhook secret must be at least 16 bytes")]
pub struct SecretTooShort;

/// The shop's webhook secret, keyed once. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct WebhookSecret {
    mac: HmacSha256,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// The shortest secret accepted, in bytes: 128 bits, so it cannot be guessed.
    pub const MIN_LEN: usize = 16;

    /// Keys the MAC with `secret`.
    pub fn new(secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < Self::MIN_LEN {
            return Err(SecretTooShort);
        }
        // HMAC takes a key of any length; the error is only for fixed-key MACs.
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| SecretTooShort)?;
        Ok(Self { mac })
    }

    /// The header value signing `body` at Unix second `t` (for the load tool, tests and the
    /// demo payment route's documentation).
    pub fn sign(&self, t: i64, body: &[u8]) -> String {
        let t = t.to_string();
        let tag = self.mac_of(&t, body).finalize().into_bytes();
        let mut header = String::with_capacity(t.len() + 6 + 2 * MAC_LEN);
        header.push_str("t=");
        header.push_str(&t);
        header.push_str(",v1=");
        for byte in tag {
            header.push(hex_digit(byte >> 4));
            header.push(hex_digit(byte & 0xf));
        }
        header
    }

    /// Checks a webhook's `Flashsale-Signature` header (`None` when absent) against its raw
    /// body at `now`, and returns the signed Unix second.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<i64, SignatureRejection> {
        let header = header.ok_or(SignatureRejection::Missing)?;
        let parsed = parse(header)?;
        let signed = self.mac_of(parsed.t_text, body);
        let authentic = parsed
            .v1s(header)
            .any(|tag| signed.clone().verify_slice(&tag).is_ok());
        if !authentic {
            return Err(SignatureRejection::Mismatch);
        }
        let skew = i128::from(now.unix_timestamp()) - i128::from(parsed.t);
        if skew.abs() > i128::from(TOLERANCE.whole_seconds()) {
            return Err(SignatureRejection::Stale);
        }
        Ok(parsed.t)
    }

    fn mac_of(&self, t: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// A header that has the right shape: `t` as sent and as a number.
struct Parsed<'a> {
    t_text: &'a str,
    t: i64,
}

impl Parsed<'_> {
    /// Every `v1` of `header`, decoded ([`parse`] has checked that each decodes).
    fn v1s<'h>(&self, header: &'h str) -> impl Iterator<Item = [u8; MAC_LEN]> + 'h {
        pairs(header)
            .filter_map(|pair| pair.ok())
            .filter(|(key, _)| *key == "v1")
            .filter_map(|(_, value)| decode_hex(value))
    }
}

/// The `key=value` pairs of a header; `Err` for a piece without `=` or with an empty key.
fn pairs(header: &str) -> impl Iterator<Item = Result<(&str, &str), SignatureRejection>> {
    header.split(',').map(|piece| {
        piece
            .trim_matches(' ')
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or(SignatureRejection::Malformed)
    })
}

fn parse(header: &str) -> Result<Parsed<'_>, SignatureRejection> {
    let mut t = None;
    let mut v1s = 0usize;
    for pair in pairs(header) {
        match pair? {
            ("t", value) => {
                let digits = !value.is_empty()
                    && value.len() <= MAX_T_DIGITS
                    && value.bytes().all(|b| b.is_ascii_digit());
                let number = value.parse::<i64>().ok().filter(|_| digits);
                match (t, number) {
                    (None, Some(number)) => t = Some((value, number)),
                    _ => return Err(SignatureRejection::Malformed),
                }
            }
            ("v1", value) => {
                decode_hex(value).ok_or(SignatureRejection::Malformed)?;
                v1s += 1;
            }
            _ => {}
        }
    }
    match t {
        Some((t_text, t)) if v1s > 0 => Ok(Parsed { t_text, t }),
        _ => Err(SignatureRejection::Malformed),
    }
}

/// 64 hex digits (either case) as 32 bytes.
fn decode_hex(text: &str) -> Option<[u8; MAC_LEN]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * MAC_LEN {
        return None;
    }
    let mut out = [0u8; MAC_LEN];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0xf)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    const SECRET: &[u8] = b"whsec_0123456789abcdef";
    const NOW: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);
    const BODY: &[u8] = br#"{"order_id":"0193","status":"succeeded","payment_ref":"pi_1","amount_minor":2500,"currency":"EUR"}"#;

    fn secret() -> WebhookSecret {
        WebhookSecret::new(SECRET).unwrap()
    }

    fn now_t() -> i64 {
        NOW.unix_timestamp()
    }

    #[test]
    fn co11_a_signature_made_as_the_spec_says_is_accepted() {
        // Computed outside this crate, by Python's hmac module:
        // hmac.new(SECRET, b"1796040000." + BODY, hashlib.sha256).hexdigest()
        let expected = "c2c0c1d03025813db3ca4b70577a081bd93e5c3471baa5e856ffaa0fcab768e0";
        assert_eq!(now_t(), 1_796_040_000);
        let header = format!("t=1796040000,v1={expected}");
        assert_eq!(secret().sign(now_t(), BODY), header);
        assert_eq!(secret().verify(Some(&header), BODY, NOW), Ok(now_t()));
        // Upper-case hex and a space after the comma are read the same.
        let loose = format!("t=1796040000, v1={}", expected.to_uppercase());
        assert_eq!(secret().verify(Some(&loose), BODY, NOW), Ok(now_t()));
    }

    #[test]
    fn co11_a_missing_header_is_signature_missing() {
        let refusal = secret().verify(None, BODY, NOW).unwrap_err();
        assert_eq!(refusal, SignatureRejection::Missing);
        assert_eq!(refusal.outcome().code(), "signature_missing");
        assert_eq!(refusal.outcome().status(), 401);
    }

    #[test]
    fn co11_every_malformed_header_is_signature_malformed() {
        let good = secret().sign(now_t(), BODY);
        let v1 = good.split_once(",v1=").unwrap().1.to_owned();
        let t = now_t();
        let bad = [
            String::new(),
            " ".into(),
            "garbage".into(),
            format!("t={t}"),
            format!("v1={v1}"),
            format!("t={t},v1="),
            format!("t={t},v1={}", &v1[..63]),
            format!("t={t},v1={v1}0"),
            format!("t={t},v1={}g", &v1[..63]),
            format!("t=,v1={v1}"),
            format!("t=-{t},v1={v1}"),
            format!("t=+{t},v1={v1}"),
            format!("t={t}.5,v1={v1}"),
            format!("t=1234567890123456789,v1={v1}"),
            format!("t={t},t={t},v1={v1}"),
            format!("t={t},v1={v1},"),
            format!("t={t},,v1={v1}"),
            format!("t={t},=x,v1={v1}"),
            format!("t={t};v1={v1}"),
            format!("T={t},v1={v1}"),
            format!("t={t},V1={v1}"),
            format!("t={t},v1={v1},v1=zz"),
        ];
        for header in bad {
            let refusal = secret().verify(Some(&header), BODY, NOW).unwrap_err();
            assert_eq!(refusal, SignatureRejection::Malformed, "{header:?}");
        }
        assert_eq!(
            SignatureRejection::Malformed.outcome().code(),
            "signature_malformed"
        );
    }

    #[test]
    fn co11_a_wrong_mac_body_time_or_secret_is_signature_mismatch() {
        let good = secret().sign(now_t(), BODY);
        let other = WebhookSecret::new(b"whsec_another_secret_").unwrap();
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let cases: [(String, &[u8]); 4] = [
            (flipped, BODY),
            (good.clone(), b"{}"),
            (
                good.replacen(&now_t().to_string(), &(now_t() - 1).to_string(), 1),
                BODY,
            ),
            (other.sign(now_t(), BODY), BODY),
        ];
        for (header, body) in cases {
            let refusal = secret().verify(Some(&header), body, NOW).unwrap_err();
            assert_eq!(refusal, SignatureRejection::Mismatch, "{header}");
        }
        // `t` is signed as sent: the same number with a leading zero is another message.
        let padded = good.replacen("t=", "t=0", 1);
        assert_eq!(
            secret().verify(Some(&padded), BODY, NOW),
            Err(SignatureRejection::Mismatch)
        );
        assert_eq!(
            SignatureRejection::Mismatch.outcome().code(),
            "signature_mismatch"
        );
    }

    #[test]
    fn co11_any_one_of_several_v1_may_match_so_a_secret_can_be_rolled() {
        let old = WebhookSecret::new(b"whsec_the_old_secret").unwrap();
        let by_old = old.sign(now_t(), BODY);
        let by_new = secret().sign(now_t(), BODY);
        let both = format!(
            "{by_old},v1={},v0=ignored",
            by_new.split_once(",v1=").unwrap().1
        );
        assert_eq!(secret().verify(Some(&both), BODY, NOW), Ok(now_t()));
        assert_eq!(old.verify(Some(&both), BODY, NOW), Ok(now_t()));
    }

    #[test]
    fn co11_five_minutes_either_way_is_accepted_and_one_second_more_is_stale() {
        for t in [now_t() - 300, now_t() + 300] {
            let header = secret().sign(t, BODY);
            assert_eq!(secret().verify(Some(&header), BODY, NOW), Ok(t));
        }
        for t in [now_t() - 301, now_t() + 301, 0, 999_999_999_999_999_999] {
            let header = secret().sign(t, BODY);
            let refusal = secret().verify(Some(&header), BODY, NOW).unwrap_err();
            assert_eq!(refusal, SignatureRejection::Stale, "{t}");
        }
        assert_eq!(
            SignatureRejection::Stale.outcome().code(),
            "signature_stale"
        );
    }

    #[test]
    fn co11_a_stale_forgery_is_called_a_mismatch_not_stale() {
        let other = WebhookSecret::new(b"whsec_another_secret_").unwrap();
        let header = other.sign(now_t() - 3600, BODY);
        assert_eq!(
            secret().verify(Some(&header), BODY, NOW),
            Err(SignatureRejection::Mismatch)
        );
    }

    #[test]
    fn co11_a_short_secret_is_refused_and_no_secret_is_ever_printed() {
        assert_eq!(
            WebhookSecret::new(b"0123456789abcde").unwrap_err(),
            SecretTooShort
        );
        assert!(WebhookSecret::new(b"0123456789abcdef").is_ok());
        assert_eq!(format!("{:?}", secret()), "WebhookSecret(<redacted>)");
    }

    proptest! {
        /// What `sign` makes, `verify` accepts for that body and no other.
        #[test]
        fn co11_signing_then_verifying_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            other in proptest::collection::vec(any::<u8>(), 0..256),
            skew in -300i64..=300,
        ) {
            let header = secret().sign(now_t() + skew, &body);
            prop_assert_eq!(secret().verify(Some(&header), &body, NOW), Ok(now_t() + skew));
            if other != body {
                prop_assert_eq!(
                    secret().verify(Some(&header), &other, NOW),
                    Err(SignatureRejection::Mismatch)
                );
            }
        }

        /// No header, however odd, panics or is accepted without the secret.
        #[test]
        fn co11_arbitrary_headers_are_refused_without_panicking(header in ".{0,200}") {
            prop_assert!(secret().verify(Some(&header), BODY, NOW).is_err());
        }
    }
}
