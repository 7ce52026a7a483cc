mod common;
use common::*;
use serde_json::json;

/// A session streams real speech and gets session.started, vad events, flushed, closed.
#[tokio::test]
async fn speech_round_trip() {
    let server = TestServer::start(&[]);
    let mut c = server
        .connect("sample_rate=48000&channels=1&encoding=pcm_s16le")
        .await;
    let (speech, rate) = audio::read_wav(audio::SPEECH);
    let mut clip = audio::silence(rate, 1.0);
    clip.extend(&speech);
    clip.extend(audio::silence(rate, 1.0));
    let events = c.stream_and_flush(&audio::s16le(&clip, 1), 1920).await;
    println!(
        "{}",
        serde_json::to_string(
            &events
                .iter()
                .filter(|e| e["type"] != "level")
                .collect::<Vec<_>>()
        )
        .unwrap()
    );
    println!("truth {:?}", audio::speech_bounds(&speech, rate, 40.0));
    let (events, code) = c.stop().await;
    println!("{events:?} {code:?}");
    let _ = json!({});
}
