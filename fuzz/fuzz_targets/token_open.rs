//! Token opening never panics, and accepts only the exact token sealed.
//! Input byte 0 picks the mode: raw text as a token, or edits (xor at
//! positions, truncation, extension) applied to a freshly sealed token.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use statetemplate::fuzzing::{open_token, seal_token};
use statetemplate::token::{Key, KeyRing};

const NOW: u64 = 1_800_000_000_000;

fn ring() -> &'static KeyRing {
    static R: OnceLock<KeyRing> = OnceLock::new();
    R.get_or_init(|| KeyRing::new(Key::from_bytes(&[7u8; 32]).unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ring = ring();
    if mode % 2 == 0 {
        if let Ok(s) = std::str::from_utf8(rest) {
            // Random text essentially never forges a tag; it must never panic.
            let _ = open_token(ring, s, NOW);
        }
        return;
    }
    let sid = [mode; 16];
    let token = seal_token(ring, sid, NOW);
    let mut bytes = token.clone().into_bytes();
    for pair in rest.chunks(2) {
        match pair {
            [p, x] if *p < 200 => {
                let i = *p as usize % bytes.len();
                bytes[i] ^= *x;
            }
            [p, _] if *p < 230 => {
                let n = (*p as usize) % bytes.len();
                bytes.truncate(n);
            }
            [_, x] => bytes.push(*x),
            [x] => bytes.push(*x),
            _ => {}
        }
        if bytes.is_empty() {
            break;
        }
    }
    let Ok(edited) = String::from_utf8(bytes) else {
        return;
    };
    let opened = open_token(ring, &edited, NOW);
    if edited == token {
        assert_eq!(opened, Some(sid));
    } else {
        assert_eq!(opened, None, "an edited token was accepted: {edited}");
    }
});
