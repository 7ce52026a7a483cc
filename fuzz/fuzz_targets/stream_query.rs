//! `parse_query` then `StreamParams::from_query` on arbitrary query strings. The contract
//! checked is `check_query_text` in actors/tests/support/wire_contract.rs, shared with the
//! proptest suite.
#![no_main]

#[path = "../../actors/tests/support/wire_contract.rs"]
mod wire_contract;

use libfuzzer_sys::fuzz_target;
use voxrt_actors::settings::VadSettings;

fuzz_target!(|data: &[u8]| {
    // The HTTP layer hands voxrt the query as text.
    let raw = String::from_utf8_lossy(data);
    let defaults = VadSettings {
        threshold: 0.5,
        silence_ms: 500,
        min_speech_ms: 250,
    };
    if let Err(violation) = wire_contract::check_query_text(&raw, &defaults) {
        panic!("{violation}");
    }
});
