//! The identity provider's public keys, read from a JWKS document or a PEM public key.
//!
//! Only three algorithms are ever accepted: RS256, ES256 (P-256) and EdDSA (Ed25519). A key
//! is bound to its one algorithm when it is loaded (from its type and curve; a JWK's own
//! `alg`, when present, must agree), so a token can never choose how its key is used:
//! symmetric (`oct`) keys, `none`, HS* and every other algorithm are refused outright, which is
//! what stops the "HS256 signed with the RSA public key" confusion.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The algorithms a token may be signed with.
pub(crate) const ACCEPTED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// An uncompressed P-256 point: `0x04 || x || y`.
const P256_POINT_BYTES: usize = 65;

/// One verification key and the one algorithm it verifies.
pub(crate) struct Key {
    /// The JWK's `kid`, if any (a PEM key has none).
    pub kid: Option<String>,
    /// The algorithm this key verifies.
    pub alg: Algorithm,
    /// The key.
    pub key: DecodingKey,
}

/// The keys in force.
pub(crate) struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// The keys that may have signed a token with header `alg` and `kid`: the keys of that
    /// algorithm, and with a `kid`, only those of that id or of none (a PEM key has none).
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.alg == alg
                && match (kid, k.kid.as_deref()) {
                    (Some(wanted), Some(own)) => wanted == own,
                    _ => true,
                }
        })
    }

    /// Reads a JWKS document. Keys of other types or algorithms are skipped (and named in
    /// the log), since a provider's set may hold encryption keys too; a set left with no
    /// usable key is refused.
    pub fn from_jwks(text: &str) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match key_of(jwk) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::warn!(
                    kid = jwk.common.key_id.as_deref().unwrap_or("-"),
                    "JWKS key skipped: {why}"
                ),
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no usable key among its {} (RS256, ES256 on P-256 or EdDSA on Ed25519 signing keys)",
                set.keys.len()
            ));
        }
        Ok(Self { keys })
    }

    /// Reads one PEM public key (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        if text.contains("PRIVATE KEY") {
            return Err("it holds a private key; give the provider's public key".into());
        }
        let bytes = text.as_bytes();
        let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            (Algorithm::RS256, key)
        } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(P256_POINT_BYTES) {
                return Err("an EC key not on P-256 (only ES256 is accepted)".into());
            }
            (Algorithm::ES256, key)
        } else if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
            (Algorithm::EdDSA, key)
        } else {
            return Err("no RSA, P-256 or Ed25519 public key in PEM form".into());
        };
        Ok(Self {
            keys: vec![Key {
                kid: None,
                alg,
                key,
            }],
        })
    }
}

/// The key of one JWK, bound to its algorithm.
fn key_of(jwk: &Jwk) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (\"use\": \"enc\")".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (HS* is never accepted)".into());
        }
        _ => return Err("not an RSA, P-256 or Ed25519 key".into()),
    };
    if let Some(declared) = jwk.common.key_algorithm {
        let agrees = matches!(
            (declared, alg),
            (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        );
        if !agrees {
            return Err(format!(
                "its \"alg\" {declared:?} is not accepted for this key"
            ));
        }
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable: {e}"))?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}
