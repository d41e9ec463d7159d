//! Session ids: 128 bits from the operating system's random source.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, ErrorKind, Result};

/// A session's id: 16 random bytes, written as 22 base64url characters.
///
/// The id names a session; it does not open one. Opening also needs the
/// session's token (see [`StateTemplate::get_session`](crate::StateTemplate::get_session)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A fresh id from the OS random source.
    pub(crate) fn generate() -> Result<SessionId> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b)
            .map_err(|e| Error::new(ErrorKind::Config, format!("OS random source failed: {e}")))?;
        Ok(SessionId(b))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub(crate) fn from_bytes(b: [u8; 16]) -> SessionId {
        SessionId(b)
    }

    /// A short prefix for logs: enough to follow one session, not enough to
    /// name it.
    pub(crate) fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 22];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", self.short())
    }
}

impl FromStr for SessionId {
    type Err = Error;

    /// Parses the 22-character form strictly (no padding, no whitespace).
    fn from_str(s: &str) -> Result<SessionId> {
        let bad = || Error::new(ErrorKind::InvalidSession, "malformed session id");
        if s.len() != 22 {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut b) {
            Ok(16) => Ok(SessionId(b)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<SessionId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strict_parse() {
        let id = SessionId::generate().unwrap();
        let s = id.to_string();
        assert_eq!(s.len(), 22);
        assert_eq!(s.parse::<SessionId>().unwrap(), id);
        assert!(format!("{s}=").parse::<SessionId>().is_err());
        assert!(format!(" {}", &s[1..]).parse::<SessionId>().is_err());
        assert!(s[..21].parse::<SessionId>().is_err());
        assert!("é".repeat(11).parse::<SessionId>().is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        assert_ne!(SessionId::generate().unwrap(), id);
    }
}
