//! A product image (docs/requirements.md#10-operating-sales, OP-14): its type decided from its
//! bytes, never from what the uploader says, and its identity (a SHA-256 of the bytes).
//!
//! Invariants: an [`ImageRef`] exists only for bytes [`ImageKind::sniff`] accepted, so an image
//! is always served as the type its bytes are; two uploads of the same bytes have the same
//! reference, and different bytes (to SHA-256's strength) a different one, which is what lets
//! the image's URL carry a version and be cached for good.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The image types a product may have: what every browser shows, and nothing that runs code
/// (SVG is refused on purpose: it is a document that may carry scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// PNG: the signature, then an `IHDR` chunk of 13 bytes with a non-zero size.
    Png,
    /// JPEG: SOI, then segments up to a start-of-frame with a non-zero size.
    Jpeg,
    /// WebP: a RIFF container of type `WEBP` whose first chunk is `VP8 `, `VP8L` or `VP8X`.
    Webp,
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

impl ImageKind {
    /// Every kind, for lists derived from this one (OpenAPI, docs).
    pub const ALL: [ImageKind; 3] = [ImageKind::Png, ImageKind::Jpeg, ImageKind::Webp];

    /// The type of `bytes` by their content (magic bytes and a minimal structural check), or
    /// `None` if they are not an image of an accepted type.
    pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
        if is_png(bytes) {
            Some(ImageKind::Png)
        } else if is_jpeg(bytes) {
            Some(ImageKind::Jpeg)
        } else if is_webp(bytes) {
            Some(ImageKind::Webp)
        } else {
            None
        }
    }

    /// The stored name (`png`, `jpeg`, `webp`).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Png => "png",
            ImageKind::Jpeg => "jpeg",
            ImageKind::Webp => "webp",
        }
    }

    /// The kind of a stored name.
    pub fn parse(raw: &str) -> Option<ImageKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The `Content-Type` it is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            ImageKind::Png => "image/png",
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Webp => "image/webp",
        }
    }
}

fn is_png(b: &[u8]) -> bool {
    // Signature, then the first chunk: length 13, type IHDR, width and height non-zero.
    b.len() >= 33
        && b.starts_with(PNG_SIGNATURE)
        && b[8..12] == 13u32.to_be_bytes()
        && &b[12..16] == b"IHDR"
        && b[16..20] != [0; 4]
        && b[20..24] != [0; 4]
}

fn is_jpeg(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return false;
    }
    // Walk the marker segments after SOI to a start-of-frame (SOF0..SOF15 but DHT, JPG and
    // DAC, which share the range); scan data or the end before one means it is not an image.
    let mut at = 2;
    loop {
        if b.get(at) != Some(&0xFF) {
            return false;
        }
        while b.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = b.get(at) else {
            return false;
        };
        at += 1;
        match marker {
            0xD0..=0xD7 | 0x01 => continue,
            0xD9 | 0xDA => return false,
            _ => {}
        }
        let Some(len) = b
            .get(at..at + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return false;
        };
        if len < 2 {
            return false;
        }
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            // Length, precision, height, width: a whole frame header, of some size.
            return len >= 8
                && b.len() >= at + len
                && b.get(at + 3..at + 7)
                    .is_some_and(|hw| hw[0..2] != [0, 0] && hw[2..4] != [0, 0]);
        }
        at += len;
    }
}

fn is_webp(b: &[u8]) -> bool {
    b.len() >= 20
        && &b[0..4] == b"RIFF"
        && &b[8..12] == b"WEBP"
        && matches!(&b[12..16], b"VP8 " | b"VP8L" | b"VP8X")
}

/// Which image a sale shows: its type and the SHA-256 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageRef {
    kind: ImageKind,
    sha256: [u8; 32],
}

impl ImageRef {
    /// The reference of `bytes`, if they are an image of an accepted type.
    pub fn of(bytes: &[u8]) -> Option<ImageRef> {
        let kind = ImageKind::sniff(bytes)?;
        Some(Self {
            kind,
            sha256: Sha256::digest(bytes).into(),
        })
    }

    /// A reference as stored: the kind's name and the digest in lowercase hex.
    pub fn from_stored(kind: &str, sha256_hex: &str) -> Option<ImageRef> {
        let kind = ImageKind::parse(kind)?;
        let hex = sha256_hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut sha256 = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
            sha256[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Some(Self { kind, sha256 })
    }

    /// The image's type.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The SHA-256 of the bytes, in lowercase hex (64 characters): the stored name and the
    /// ETag.
    pub fn sha256_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.sha256 {
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// The version carried in the image's URL: the first 16 hex digits of the digest (64
    /// bits: a new upload gets a new URL, a collision among one sale's images is not a worry).
    /// ASCII, returned by value so that a status body writes it without allocating.
    pub fn version(&self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, byte) in self.sha256[..8].iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0xF)];
        }
        out
    }

    /// As recorded in the sale's changes: `png:<sha256 hex>`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.sha256_hex())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest well-formed headers of each type (enough for the sniffer; the test of the
    /// HTTP API uses real files).
    pub(crate) fn png() -> Vec<u8> {
        let mut b = PNG_SIGNATURE.to_vec();
        b.extend_from_slice(&13u32.to_be_bytes());
        b.extend_from_slice(b"IHDR");
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        b
    }

    fn jpeg() -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        // APP0 (JFIF) of 16 bytes, then SOF0: 8-bit, 1x1, one component.
        b.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10]);
        b.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8, 0, 1, 0, 1, 1, 1, 0x11, 0]);
        b
    }

    fn webp() -> Vec<u8> {
        let mut b = b"RIFF".to_vec();
        b.extend_from_slice(&12u32.to_le_bytes());
        b.extend_from_slice(b"WEBPVP8L");
        b.extend_from_slice(&[0; 8]);
        b
    }

    #[test]
    fn each_accepted_type_is_told_by_its_bytes() {
        assert_eq!(ImageKind::sniff(&png()), Some(ImageKind::Png));
        assert_eq!(ImageKind::sniff(&jpeg()), Some(ImageKind::Jpeg));
        assert_eq!(ImageKind::sniff(&webp()), Some(ImageKind::Webp));
    }

    #[test]
    fn a_signature_followed_by_garbage_is_not_an_image() {
        let mut bad_png = PNG_SIGNATURE.to_vec();
        bad_png.extend_from_slice(&[0x42; 40]);
        let mut zero_size = png();
        zero_size[16..20].copy_from_slice(&[0; 4]);
        let mut bad_jpeg = vec![0xFF, 0xD8, 0xFF, 0xDA, 0, 4, 0, 0];
        bad_jpeg.extend_from_slice(&[0x42; 40]);
        let riff_wave = b"RIFF\x0c\0\0\0WAVEfmt \0\0\0\0".to_vec();
        for bad in [
            bad_png,
            zero_size,
            bad_jpeg,
            vec![0xFF, 0xD8, 0xFF],
            riff_wave,
            b"<html><script>alert(1)</script></html>".to_vec(),
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>".to_vec(),
            Vec::new(),
            png()[..32].to_vec(),
        ] {
            assert_eq!(ImageKind::sniff(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_jpeg_walk_never_reads_past_the_end() {
        let full = jpeg();
        for cut in 0..full.len() {
            assert_eq!(ImageKind::sniff(&full[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_reference_round_trips_through_its_stored_form() {
        let r = ImageRef::of(&png()).unwrap();
        assert_eq!(r.kind(), ImageKind::Png);
        assert_eq!(r.sha256_hex().len(), 64);
        assert_eq!(
            ImageRef::from_stored("png", &r.sha256_hex()),
            Some(r),
            "round trip"
        );
        assert_eq!(&r.version()[..], &r.sha256_hex().as_bytes()[..16]);
        assert_eq!(ImageRef::from_stored("gif", &r.sha256_hex()), None);
        assert_eq!(
            ImageRef::from_stored("png", &r.sha256_hex().to_uppercase()),
            None
        );
        assert_eq!(ImageRef::from_stored("png", "abc"), None);
        assert_ne!(ImageRef::of(&webp()).unwrap(), r);
    }
}
