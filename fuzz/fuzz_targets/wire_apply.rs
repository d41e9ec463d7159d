//! The reference applier (the browser's model) never panics on any frame
//! after a valid join, and can always write its HTML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statetemplate::testing::WireClient;

/// A wire v2 join: a list (anchor 1) of two items and a text leaf (anchor 2).
const JOIN: &str = r#"{"q":0,"s":{"0":[["<ul>","</ul><p>","</p>"],[1,2]],"1":[["<li>","</li>"],[0]]},"o":[["",[0,{"k":["a","b"],"b":[[1,"x"],[1,"y"]]},"t"]]]}"#;

fuzz_target!(|data: &[u8]| {
    let mut c = WireClient::new();
    c.apply(JOIN).expect("the join frame applies");
    for frame in String::from_utf8_lossy(data).split('\n') {
        let _ = c.apply(frame);
        let _ = c.html();
    }
});
