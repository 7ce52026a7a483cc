//! `check_audio_frame` then `decode_to_mono` on arbitrary binary frames. The first five
//! bytes pick the format and the frame limit; the rest is the frame. The contract checked
//! is `check_audio` in actors/tests/support/wire_contract.rs, shared with the proptest
//! suite.
#![no_main]

#[path = "../../actors/tests/support/wire_contract.rs"]
mod wire_contract;

use libfuzzer_sys::fuzz_target;
use voxrt_actors::audio::{Encoding, InputFormat};

fuzz_target!(|data: &[u8]| {
    let Some((head, frame)) = data.split_first_chunk::<5>() else {
        return;
    };
    let encoding = if head[0] & 1 == 0 {
        Encoding::PcmS16le
    } else {
        Encoding::PcmF32le
    };
    let format = InputFormat {
        sample_rate: 8_000 + u32::from(u16::from_le_bytes([head[1], head[2]])) * 3 % 184_001,
        channels: 1 + u16::from(head[0] >> 1) % 8,
        encoding,
    };
    // 0 means no limit, to reach every length libFuzzer tries.
    let max_binary = match u16::from_le_bytes([head[3], head[4]]) {
        0 => usize::MAX,
        n => usize::from(n),
    };
    let max_text = 65_536;
    // Samples already in the buffer must come out untouched.
    let prefix = [7.0f32];
    if let Err(violation) =
        wire_contract::check_audio(&format, frame, max_binary, max_text, &prefix)
    {
        panic!("{violation}");
    }
});
