mod common;
use common::*;

#[tokio::test]
async fn explore() {
    let server = TestServer::start(&[]);
    for f in ["Front_Center","Front_Left","Front_Right","Rear_Center","Rear_Left","Rear_Right","Side_Left","Side_Right","Noise"] {
        let path = format!("/usr/share/sounds/alsa/{f}.wav");
        let (speech, rate) = audio::read_wav(&path);
        let bounds: Vec<_> = [30.0,35.0,40.0,45.0,50.0].iter().map(|&d| audio::speech_bounds(&speech, rate, d)).collect();
        let mut clip = audio::silence(rate, 1.0);
        clip.extend(&speech);
        clip.extend(audio::silence(rate, 1.0));
        let mut c = server.connect("sample_rate=48000&channels=1&encoding=pcm_s16le").await;
        let events = c.stream_and_flush(&audio::s16le(&clip, 1), 1920).await;
        println!("{f}: len {} ms peak {:.1} dB bounds {:?} segs {:?}", speech.len()*1000/rate as usize, audio::rms_dbfs(&speech), bounds, segments(&events));
        c.stop().await;
    }
}
