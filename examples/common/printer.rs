//! How the examples show server events: JSON lines for scripts, or a human view with a
//! level meter, speech on/off and one line per speech segment.

use serde_json::Value;
use std::io::{IsTerminal, Write};

/// A parsed server event.
pub(super) struct Event {
    /// Its `type` (empty when the text was not a JSON object with one).
    pub(super) kind: String,
    pub(super) value: Value,
}

/// Prints server events: JSON lines, or a human view with a level meter that is redrawn in
/// place on a terminal and printed once per second of audio otherwise.
pub(super) struct Printer {
    json: bool,
    tty: bool,
    meter_shown: bool,
    in_speech: bool,
    /// Non-terminal output: the current second of audio, the end of its last level interval,
    /// and the loudest RMS and peak in it.
    window: Option<(u64, u64, f64, f64)>,
}

impl Printer {
    pub(super) fn new(json: bool) -> Self {
        Printer {
            json,
            tty: std::io::stdout().is_terminal(),
            meter_shown: false,
            in_speech: false,
            window: None,
        }
    }

    /// Prints one text frame from the server (`value`: `text` parsed, `Null` if it is not
    /// JSON) and returns it.
    pub(super) fn print(&mut self, text: &str, value: Value) -> Event {
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if self.json {
            println!("{text}");
        } else {
            self.human(&kind, &value, text);
        }
        let _ = std::io::stdout().flush();
        Event { kind, value }
    }

    fn human(&mut self, kind: &str, v: &Value, raw: &str) {
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let float = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(-120.0);
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match kind {
            "level" => self.level(num("t_ms"), float("rms_dbfs"), float("peak_dbfs")),
            "vad" => {
                let t = num("t_ms");
                if text("event") == "speech_start" {
                    self.in_speech = true;
                    self.line(&format!("{}  speech started", fmt_ms(t)));
                } else {
                    self.in_speech = false;
                    let d = num("duration_ms");
                    self.line(&format!(
                        "{}  speech segment: start {}, duration {}",
                        fmt_ms(t),
                        fmt_ms(t.saturating_sub(d)),
                        fmt_ms(d)
                    ));
                }
            }
            "transcript" => self.line(&format!(
                "{}  \"{}\" (speech {} to {})",
                fmt_ms(num("end_ms")),
                text("text"),
                fmt_ms(num("t_ms")),
                fmt_ms(num("end_ms"))
            )),
            "session.started" => {
                let input = v.get("input").cloned().unwrap_or(Value::Null);
                let get = |k: &str| input.get(k).map(|x| x.to_string()).unwrap_or_default();
                self.line(&format!(
                    "session {} started: input {} Hz, {} ch, {} -> pipeline 16 kHz mono",
                    text("session_id"),
                    get("sample_rate"),
                    get("channels"),
                    get("encoding").trim_matches('"'),
                ));
            }
            "flushed" => self.line(&format!("flushed: {} processed", fmt_ms(num("audio_ms")))),
            "error" => {
                let fatal = v.get("fatal").and_then(Value::as_bool).unwrap_or(false);
                self.line(&format!(
                    "server error {}: {} ({}, correlation_id {})",
                    text("code"),
                    text("message"),
                    if fatal { "fatal" } else { "non-fatal" },
                    text("correlation_id"),
                ));
            }
            "session.closed" => {
                self.flush_window();
                self.end_line();
            }
            "pong" => {}
            _ => self.line(&format!("event: {raw}")),
        }
    }

    fn level(&mut self, t_ms: u64, rms: f64, peak: f64) {
        if self.tty {
            let line = meter_line(t_ms, rms, peak, Some(self.in_speech));
            print!("\r\x1b[2K{line}");
            self.meter_shown = true;
            return;
        }
        let second = t_ms.saturating_sub(1) / 1000;
        match self.window {
            Some((s, _, r, p)) if s == second => {
                self.window = Some((s, t_ms, r.max(rms), p.max(peak)));
            }
            _ => {
                self.flush_window();
                self.window = Some((second, t_ms, rms, peak));
            }
        }
    }

    /// Non-terminal output: one meter line per second of audio (the loudest level in it).
    fn flush_window(&mut self) {
        if let Some((_, t_ms, rms, peak)) = self.window.take() {
            println!("{}", meter_line(t_ms, rms, peak, None));
        }
    }

    /// Prints a line of its own, clearing the meter first.
    fn line(&mut self, s: &str) {
        self.end_line();
        println!("{s}");
    }

    /// Ends an in-place meter line so that what follows starts on a fresh line.
    pub(super) fn end_line(&mut self) {
        if self.meter_shown {
            print!("\r\x1b[2K");
            self.meter_shown = false;
            let _ = std::io::stdout().flush();
        }
    }
}

/// `   1.30 s  [#########........|...]  -23.4 dBFS (peak  -8.1)  SPEECH`; the indicator
/// only on a live (terminal) line.
fn meter_line(t_ms: u64, rms: f64, peak: f64, speech: Option<bool>) -> String {
    const WIDTH: usize = 30;
    const FLOOR: f64 = -60.0;
    let pos = |db: f64| (((db - FLOOR) / -FLOOR).clamp(0.0, 1.0) * WIDTH as f64).round() as usize;
    let (fill, peak_pos) = (pos(rms), pos(peak));
    let bar: String = (0..WIDTH)
        .map(|i| {
            if i < fill {
                '#'
            } else if peak_pos > 0 && i == peak_pos.min(WIDTH) - 1 {
                '|'
            } else {
                '.'
            }
        })
        .collect();
    let indicator = match speech {
        Some(true) => "  SPEECH",
        Some(false) => "  silence",
        None => "",
    };
    format!(
        "{}  level [{bar}] {rms:6.1} dBFS (peak {peak:6.1}){indicator}",
        fmt_ms(t_ms)
    )
}

/// `1234` -> `   1.23 s`.
pub(super) fn fmt_ms(ms: u64) -> String {
    format!("{:7.2} s", ms as f64 / 1000.0)
}
