//! What the client sends: the WebSocket URL's query string and the text
//! frames of a connection (see `docs/protocol.md`), and the hash a client
//! acks frames with.

use serde::Deserialize;
use serde_json::Value as Json;

use super::ConnectParams;

/// FNV-1a (32 bits) over the UTF-16 code units of a frame, as the JS client
/// computes it for its acks: a client whose frame for a seq hashes
/// differently from the one sent as that seq has lost or reordered one.
pub(crate) fn frame_hash(frame: &str) -> u32 {
    frame.encode_utf16().fold(0x811c_9dc5u32, |h, u| {
        (h ^ u32::from(u)).wrapping_mul(0x0100_0193)
    })
}

/// Parses `sid=…&token=…&seq=…&epoch=…&v=…&c=…&p=…` (percent-decoded); unknown
/// or malformed fields are left unset.
pub(crate) fn parse_query(q: &str) -> ConnectParams {
    let mut p = ConnectParams::default();
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "sid" => p.sid = v,
            "token" => p.token = v,
            "seq" => p.seq = v.parse().ok(),
            "epoch" => p.epoch = Some(v),
            "v" => p.v = v.parse().ok(),
            "c" => p.c = Some(v),
            "p" => p.page = v.parse().ok(),
            _ => {}
        }
    }
    p
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A frame from the client.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientFrame {
    /// `{"t":"ev","n":NAME,"d":PAYLOAD,"r":REF?}`
    Event {
        name: String,
        data: Json,
        r: Option<u64>,
    },
    /// `{"t":"ack","q":SEQ,"h":HASH?}`: the client holds `SEQ`; `HASH` is
    /// [`frame_hash`] of the frame it applied as `SEQ` (absent after a join).
    Ack { seq: u64, hash: Option<u32> },
    /// `{"t":"ping"}`
    Ping,
}

/// Parses a client frame; the error is a message for the error frame.
pub(crate) fn parse_client_frame(text: &str) -> std::result::Result<ClientFrame, String> {
    #[derive(Deserialize)]
    struct Raw {
        t: String,
        #[serde(default)]
        n: Option<String>,
        #[serde(default)]
        d: Option<Json>,
        #[serde(default)]
        q: Option<u64>,
        #[serde(default)]
        r: Option<u64>,
        #[serde(default)]
        h: Option<String>,
    }
    let raw: Raw = serde_json::from_str(text).map_err(|e| format!("malformed frame: {e}"))?;
    match raw.t.as_str() {
        "ev" => {
            let name = raw.n.ok_or("an event needs a name (\"n\")")?;
            if name.is_empty() || name.len() > 128 {
                return Err("an event name is 1 to 128 bytes".to_owned());
            }
            Ok(ClientFrame::Event {
                name,
                data: raw.d.unwrap_or(Json::Null),
                r: raw.r,
            })
        }
        "ack" => Ok(ClientFrame::Ack {
            seq: raw.q.ok_or("an ack needs a seq (\"q\")")?,
            hash: match raw.h {
                None => None,
                Some(h) => Some(
                    (h.len() <= 8)
                        .then(|| u32::from_str_radix(&h, 16).ok())
                        .flatten()
                        .ok_or("an ack's hash (\"h\") is up to 8 hex digits")?,
                ),
            },
        }),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(format!("unknown frame type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query() {
        let p = parse_query("sid=abc&token=a%2Bb-_&seq=7&epoch=00ff&v=1&x=%");
        assert_eq!(p.sid, "abc");
        assert_eq!(p.token, "a+b-_");
        assert_eq!(p.seq, Some(7));
        assert_eq!(p.epoch.as_deref(), Some("00ff"));
        assert_eq!(p.v, Some(1));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            parse_client_frame(r#"{"t":"ev","n":"inc","d":{"by":2},"r":7}"#),
            Ok(ClientFrame::Event {
                name: "inc".into(),
                data: serde_json::json!({"by": 2}),
                r: Some(7)
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"t":"ack","q":4}"#),
            Ok(ClientFrame::Ack { seq: 4, hash: None })
        );
        assert_eq!(
            parse_client_frame(r#"{"t":"ack","q":4,"h":"1a47e90b"}"#),
            Ok(ClientFrame::Ack {
                seq: 4,
                hash: Some(0x1a47e90b)
            })
        );
        // The client's hash (FNV-1a over UTF-16 code units) of "abc", as
        // src/client/statetemplate.js computes it.
        assert_eq!(frame_hash("abc"), 0x1a47e90b);
        assert_eq!(frame_hash("\u{1F600}é"), {
            let mut h: u32 = 0x811c9dc5;
            for u in [0xD83Du16, 0xDE00, 0xE9] {
                h = (h ^ u32::from(u)).wrapping_mul(0x0100_0193);
            }
            h
        });
        assert_eq!(parse_client_frame(r#"{"t":"ping"}"#), Ok(ClientFrame::Ping));
        for bad in [
            "",
            "null",
            "[]",
            "{",
            r#"{"t":1}"#,
            r#"{"t":"ev"}"#,
            r#"{"t":"ev","n":""}"#,
            r#"{"t":"ack"}"#,
            r#"{"t":"nope"}"#,
        ] {
            assert!(parse_client_frame(bad).is_err(), "{bad}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse_client_frame(&deep).is_err());
    }
}
