//! Client frames and connect query strings never panic the parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statetemplate::fuzzing::{parse_client_frame, parse_query};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_client_frame(&text);
    let _ = parse_query(&text);
    let _ = text.parse::<statetemplate::SessionId>();
});
