//! Session tokens: AES-256-GCM sealed, URL-safe, versioned; and the key ring
//! that seals and opens them.
//!
//! A token is base64url (no padding) of:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version (`1`) |
//! | 4 | key id (the first 4 bytes of AES-256 of a zero block under the key) |
//! | 12 | random nonce from the OS |
//! | 36 + 16 | AES-256-GCM ciphertext of the payload, then the tag |
//!
//! The payload is the 16-byte session id, issued-at and expires-at (unix
//! milliseconds, big-endian u64) and a u32 generation. The additional
//! authenticated data binds the version, the key id and the purpose
//! (`ws-v1`), so no field can be swapped or reused for another purpose.
//! A token is 92 characters.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::BlockCipherEncrypt;
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use crate::id::SessionId;
use crate::{Error, ErrorKind, Result};

/// The token format version.
pub(crate) const TOKEN_VERSION: u8 = 1;
/// What tokens of this format are for; bound into the authenticated data.
const PURPOSE: &[u8] = b"ws-v1";
/// Tokens longer than this are rejected before any decoding.
pub(crate) const MAX_TOKEN_LEN: usize = 512;
/// A token issued this far in the future is still accepted (clock skew
/// between instances).
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(5);

const HEADER: usize = 1 + 4;
const NONCE: usize = 12;
const PAYLOAD: usize = 16 + 8 + 8 + 4;
const TAG: usize = 16;
const RAW: usize = HEADER + NONCE + PAYLOAD + TAG;

/// One AES-256 key. Its `Debug` shows only its id.
#[derive(Clone)]
pub struct Key {
    id: u32,
    bytes: [u8; 32],
    cipher: Aes256Gcm,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:08x})", self.id)
    }
}

impl Key {
    /// A fresh random key from the OS random source.
    pub fn generate() -> Result<Key> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)
            .map_err(|e| Error::new(ErrorKind::Config, format!("OS random source failed: {e}")))?;
        Ok(Key::from_array(b))
    }

    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Key> {
        let b: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("a key is 32 bytes, got {}", bytes.len()),
            )
        })?;
        Ok(Key::from_array(b))
    }

    /// A key from its text form (base64url of 32 bytes, as [`Key::encode`]
    /// writes it).
    pub fn decode(text: &str) -> Result<Key> {
        let text = text.trim();
        let mut b = [0u8; 32];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut b) {
            Ok(32) if text.len() == 43 => Ok(Key::from_array(b)),
            _ => Err(Error::new(
                ErrorKind::Config,
                "a key is 43 base64url characters (32 bytes); make one with Key::generate()",
            )),
        }
    }

    /// The key's text form, for an environment variable or a secret store.
    /// Treat it as a secret.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    /// The key's id, carried in every token it seals (not secret).
    pub fn id(&self) -> u32 {
        self.id
    }

    fn from_array(bytes: [u8; 32]) -> Key {
        // The id is a key check value: the first bytes of the key's
        // encryption of a zero block. It reveals nothing usable of the key.
        let block_cipher = Aes256::new((&bytes).into());
        let mut block = [0u8; 16].into();
        block_cipher.encrypt_block(&mut block);
        let id = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
        Key {
            id,
            cipher: Aes256Gcm::new((&bytes).into()),
            bytes,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    /// Unix ms after which tokens of this key are rejected (retired keys).
    accept_until: Option<u64>,
}

/// The keys tokens are sealed and opened with. The first key seals; every
/// key opens, retired ones only until their grace period ends.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<Entry>,
}

impl KeyRing {
    /// A ring with one key.
    pub fn new(primary: Key) -> KeyRing {
        KeyRing {
            keys: vec![Entry {
                key: primary,
                accept_until: None,
            }],
        }
    }

    /// A ring with one fresh random key (tokens will not survive a restart).
    pub fn generate() -> Result<KeyRing> {
        Ok(KeyRing::new(Key::generate()?))
    }

    /// Adds a retired key, accepted for opening until `accept_until`.
    pub fn with_retired(mut self, key: Key, accept_until: SystemTime) -> KeyRing {
        self.keys.push(Entry {
            key,
            accept_until: Some(unix_ms(accept_until)),
        });
        self
    }

    /// Makes `key` the sealing key; the previous one keeps opening tokens
    /// for `grace` from now, then is rejected.
    pub fn rotate(mut self, key: Key, grace: Duration) -> KeyRing {
        let until = unix_ms(SystemTime::now() + grace);
        if let Some(first) = self.keys.first_mut() {
            first.accept_until = Some(until);
        }
        self.keys.insert(
            0,
            Entry {
                key,
                accept_until: None,
            },
        );
        self
    }

    /// Reads keys from text: a comma-separated list, sealing key first.
    /// A retired key is written `KEY@UNIX_SECONDS` (accepted until then).
    pub fn parse(text: &str) -> Result<KeyRing> {
        let mut keys = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, until) = match part.split_once('@') {
                Some((k, t)) => {
                    let secs: u64 = t.trim().parse().map_err(|_| {
                        Error::new(ErrorKind::Config, "a retired key is KEY@UNIX_SECONDS")
                    })?;
                    (k, Some(secs.saturating_mul(1000)))
                }
                None => (part, None),
            };
            keys.push(Entry {
                key: Key::decode(k)?,
                accept_until: until,
            });
        }
        if keys.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no keys given"));
        }
        if keys[0].accept_until.is_some() {
            return Err(Error::new(
                ErrorKind::Config,
                "the first (sealing) key cannot be retired",
            ));
        }
        Ok(KeyRing { keys })
    }

    /// Reads keys from the environment variable `var` (see [`KeyRing::parse`]).
    pub fn from_env(var: &str) -> Result<KeyRing> {
        let text = std::env::var(var)
            .map_err(|_| Error::new(ErrorKind::Config, format!("{var} is not set")))?;
        KeyRing::parse(&text)
    }

    /// The sealing key's id.
    pub fn primary_id(&self) -> u32 {
        self.keys[0].key.id
    }

    pub(crate) fn seal(&self, claims: &Claims) -> Result<String> {
        self.seal_for(PURPOSE, claims)
    }

    /// Seals for another purpose (the AAD binds it: a token of one purpose
    /// never opens for another).
    fn seal_for(&self, purpose: &[u8], claims: &Claims) -> Result<String> {
        let key = &self.keys[0].key;
        let mut raw = Vec::with_capacity(RAW);
        raw.push(TOKEN_VERSION);
        raw.extend_from_slice(&key.id.to_be_bytes());
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::new(ErrorKind::Config, format!("OS random source failed: {e}")))?;
        raw.extend_from_slice(&nonce);
        let mut plain = [0u8; PAYLOAD];
        plain[..16].copy_from_slice(claims.session.as_bytes());
        plain[16..24].copy_from_slice(&claims.issued_ms.to_be_bytes());
        plain[24..32].copy_from_slice(&claims.expires_ms.to_be_bytes());
        plain[32..].copy_from_slice(&claims.generation.to_be_bytes());
        let aad = aad(&raw[..HEADER], purpose);
        let sealed = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::new(ErrorKind::Config, "token sealing failed"))?;
        raw.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(&raw))
    }

    /// Opens a token: length cap, strict base64url, version, key id (and
    /// its grace period), authenticity, then time. Every failure is the
    /// same [`ErrorKind::InvalidSession`] error.
    pub(crate) fn open(&self, token: &str, now_ms: u64) -> Result<Claims> {
        self.open_inner(PURPOSE, token, now_ms)
            .ok_or_else(Error::invalid_session)
    }

    fn open_inner(&self, purpose: &[u8], token: &str, now_ms: u64) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN || token.len() != RAW.div_ceil(3) * 4 - (3 - RAW % 3) % 3 {
            return None;
        }
        let mut raw = [0u8; RAW + 3];
        let n = URL_SAFE_NO_PAD.decode_slice(token, &mut raw).ok()?;
        if n != RAW || raw[0] != TOKEN_VERSION {
            return None;
        }
        let raw = &raw[..RAW];
        let id = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        let entry = self.keys.iter().find(|e| e.key.id == id)?;
        if entry.accept_until.is_some_and(|until| now_ms >= until) {
            return None;
        }
        let nonce: [u8; NONCE] = raw[HEADER..HEADER + NONCE].try_into().ok()?;
        let aad = aad(&raw[..HEADER], purpose);
        let plain = entry
            .key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &raw[HEADER + NONCE..],
                    aad: &aad,
                },
            )
            .ok()?;
        if plain.len() != PAYLOAD {
            return None;
        }
        let session = SessionId::from_bytes(plain[..16].try_into().ok()?);
        let issued_ms = u64::from_be_bytes(plain[16..24].try_into().ok()?);
        let expires_ms = u64::from_be_bytes(plain[24..32].try_into().ok()?);
        let generation = u32::from_be_bytes(plain[32..].try_into().ok()?);
        let skew = CLOCK_SKEW.as_millis() as u64;
        if issued_ms > now_ms.saturating_add(skew) || now_ms >= expires_ms {
            return None;
        }
        Some(Claims {
            session,
            issued_ms,
            expires_ms,
            generation,
        })
    }
}

fn aad(header: &[u8], purpose: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + purpose.len());
    a.extend_from_slice(header);
    a.extend_from_slice(purpose);
    a
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) session: SessionId,
    pub(crate) issued_ms: u64,
    pub(crate) expires_ms: u64,
    pub(crate) generation: u32,
}

impl Claims {
    /// Whether the token names `id` (compared in constant time).
    pub(crate) fn names(&self, id: &SessionId) -> bool {
        self.session.as_bytes().ct_eq(id.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> Claims {
        Claims {
            session: SessionId::generate().unwrap(),
            issued_ms: now,
            expires_ms: now + 60_000,
            generation: 3,
        }
    }

    #[test]
    fn round_trip() {
        let ring = KeyRing::generate().unwrap();
        let c = claims(1_000_000);
        let t = ring.seal(&c).unwrap();
        assert_eq!(t.len(), 92);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(ring.open(&t, 1_000_001).unwrap(), c);
        // Two seals of the same claims differ (fresh nonce).
        assert_ne!(ring.seal(&c).unwrap(), t);
    }

    #[test]
    fn time_bounds() {
        let ring = KeyRing::generate().unwrap();
        let c = claims(1_000_000);
        let t = ring.seal(&c).unwrap();
        assert!(ring.open(&t, c.expires_ms - 1).is_ok());
        assert!(ring.open(&t, c.expires_ms).is_err(), "boundary is expired");
        assert!(ring.open(&t, c.expires_ms + 1).is_err());
        let skew = CLOCK_SKEW.as_millis() as u64;
        assert!(ring.open(&t, c.issued_ms - skew).is_ok());
        assert!(
            ring.open(&t, c.issued_ms - skew - 1).is_err(),
            "issued in the future"
        );
    }

    #[test]
    fn tampering_and_wrong_keys() {
        let ring = KeyRing::generate().unwrap();
        let c = claims(1_000_000);
        let t = ring.seal(&c).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut r = raw.clone();
                r[i] ^= 1 << bit;
                let tt = URL_SAFE_NO_PAD.encode(&r);
                assert!(ring.open(&tt, 1_000_001).is_err(), "byte {i} bit {bit}");
            }
        }
        let other = KeyRing::generate().unwrap();
        assert!(other.open(&t, 1_000_001).is_err());
        assert!(ring.open(&t[..91], 1_000_001).is_err());
        assert!(ring.open(&format!("{t}A"), 1_000_001).is_err());
        assert!(ring.open(&format!("{t}="), 1_000_001).is_err());
        assert!(ring.open("", 1_000_001).is_err());
        assert!(ring.open(&"A".repeat(1 << 20), 1_000_001).is_err());
        let e = ring.open(&t[..91], 1_000_001).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSession);
    }

    #[test]
    fn rotation_and_grace() {
        let old = Key::generate().unwrap();
        let new = Key::generate().unwrap();
        let c = claims(unix_ms(SystemTime::now()));
        let t_old = KeyRing::new(old.clone()).seal(&c).unwrap();
        let until = SystemTime::now() + Duration::from_secs(60);
        let ring = KeyRing::new(new.clone()).with_retired(old.clone(), until);
        assert_eq!(ring.open(&t_old, c.issued_ms).unwrap(), c);
        assert!(ring.open(&t_old, unix_ms(until)).is_err());
        let t_new = ring.seal(&c).unwrap();
        assert!(KeyRing::new(old).open(&t_new, c.issued_ms).is_err());
        assert_eq!(ring.primary_id(), new.id());
    }

    #[test]
    fn another_purpose_does_not_open() {
        let ring = KeyRing::generate().unwrap();
        let c = claims(1_000_000);
        let other = ring.seal_for(b"email-v1", &c).unwrap();
        assert!(ring.open(&other, 1_000_001).is_err());
        assert!(ring.open_inner(b"email-v1", &other, 1_000_001).is_some());
        let ws = ring.seal(&c).unwrap();
        assert!(ring.open_inner(b"email-v1", &ws, 1_000_001).is_none());
    }

    #[test]
    fn a_million_tokens_repeat_no_nonce_and_ids_do_not_repeat() {
        let ring = KeyRing::generate().unwrap();
        let c = claims(1_000_000);
        let mut nonces = std::collections::HashSet::with_capacity(1_000_000);
        let mut ids = std::collections::HashSet::with_capacity(1_000_000);
        let mut raw = [0u8; RAW + 3];
        for _ in 0..1_000_000 {
            let t = ring.seal(&c).unwrap();
            URL_SAFE_NO_PAD.decode_slice(&t, &mut raw).unwrap();
            let nonce: [u8; NONCE] = raw[HEADER..HEADER + NONCE].try_into().unwrap();
            assert!(nonces.insert(nonce), "a nonce repeated");
            assert!(
                ids.insert(*SessionId::generate().unwrap().as_bytes()),
                "a session id repeated"
            );
        }
        assert_eq!((nonces.len(), ids.len()), (1_000_000, 1_000_000));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn ring_and_token() -> impl Strategy<Value = (KeyRing, String, Claims)> {
            (
                any::<[u8; 32]>(),
                any::<[u8; 16]>(),
                1u64..1 << 50,
                1u64..1 << 30,
                any::<u32>(),
            )
                .prop_map(|(k, sid, at, ttl, generation)| {
                    let ring = KeyRing::new(Key::from_bytes(&k).unwrap());
                    let c = Claims {
                        session: SessionId::from_bytes(sid),
                        issued_ms: at,
                        expires_ms: at + ttl,
                        generation,
                    };
                    let t = ring.seal(&c).unwrap();
                    (ring, t, c)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn round_trips((ring, t, c) in ring_and_token()) {
                prop_assert_eq!(ring.open(&t, c.issued_ms).unwrap(), c);
            }

            #[test]
            fn any_bit_flip_is_refused((ring, t, c) in ring_and_token(), i in 0usize..RAW, bit in 0u8..8) {
                let mut raw = URL_SAFE_NO_PAD.decode(&t).unwrap();
                raw[i] ^= 1 << bit;
                prop_assert!(ring.open(&URL_SAFE_NO_PAD.encode(&raw), c.issued_ms).is_err());
            }

            #[test]
            fn any_character_change_is_refused((ring, t, c) in ring_and_token(), i in 0usize..92, ch in any::<char>()) {
                let mut chars: Vec<char> = t.chars().collect();
                prop_assume!(chars[i] != ch);
                chars[i] = ch;
                let edited: String = chars.into_iter().collect();
                prop_assert!(ring.open(&edited, c.issued_ms).is_err());
            }

            #[test]
            fn any_truncation_or_extension_is_refused((ring, t, c) in ring_and_token(), cut in 0usize..92, tail in "[A-Za-z0-9_=+/ \t\n-]{1,40}") {
                prop_assert!(ring.open(&t[..cut], c.issued_ms).is_err());
                let (longer, prefixed) = (format!("{t}{tail}"), format!("{tail}{t}"));
                prop_assert!(ring.open(&longer, c.issued_ms).is_err());
                prop_assert!(ring.open(&prefixed, c.issued_ms).is_err());
            }

            #[test]
            fn any_junk_is_refused((ring, _t, c) in ring_and_token(), junk in ".{0,600}") {
                prop_assert!(ring.open(&junk, c.issued_ms).is_err());
            }

            #[test]
            fn another_key_refuses((_ring, t, c) in ring_and_token(), other in any::<[u8; 32]>()) {
                let other = KeyRing::new(Key::from_bytes(&other).unwrap());
                prop_assert!(other.open(&t, c.issued_ms).is_err());
            }

            #[test]
            fn time_bounds_hold((ring, t, c) in ring_and_token(), after in 0u64..1 << 31) {
                let skew = CLOCK_SKEW.as_millis() as u64;
                let ok = ring.open(&t, c.issued_ms.saturating_sub(skew) + after).is_ok();
                let now = c.issued_ms.saturating_sub(skew) + after;
                prop_assert_eq!(ok, now < c.expires_ms);
            }
        }
    }

    #[test]
    fn key_text_forms() {
        let k = Key::generate().unwrap();
        let text = k.encode();
        assert_eq!(text.len(), 43);
        assert_eq!(Key::decode(&text).unwrap().id(), k.id());
        assert!(Key::decode(&text[..42]).is_err());
        assert!(Key::from_bytes(&[0; 31]).is_err());
        let k2 = Key::generate().unwrap();
        let ring = KeyRing::parse(&format!("{text}, {}@4102444800", k2.encode())).unwrap();
        assert_eq!(ring.primary_id(), k.id());
        assert_eq!(ring.keys[1].accept_until, Some(4_102_444_800_000));
        assert!(KeyRing::parse(&format!("{text}@1")).is_err());
        assert!(KeyRing::parse("").is_err());
        assert!(!format!("{k:?}").contains(&text));
    }
}
