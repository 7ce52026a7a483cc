//! `ClientMessage::parse` on arbitrary text frames. The first byte picks `max_depth`.
//! The contract checked is `check_control_text` in actors/tests/support/wire_contract.rs,
//! shared with the proptest suite.
#![no_main]

#[path = "../../actors/tests/support/wire_contract.rs"]
mod wire_contract;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    // WebSocket text frames are UTF-8 (the codec checks it before voxrt sees them).
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let max_depth = usize::from(first % 64);
    if let Err(violation) = wire_contract::check_control_text(text, max_depth) {
        panic!("{violation}");
    }
});
