//! Input devices: `--list-devices` and finding the one `--device` names.

use crate::common::Failure;
use cpal::traits::{DeviceTrait, HostTrait};
use cpal::SampleFormat;

/// The advice that ends every "no usable device" message.
pub const TRY_DEVICES: &str =
    "try `--list-devices` to see the input devices, then `--device NAME` to pick one";

/// `--list-devices`: every input device of the default host with its configurations.
pub fn list_devices() -> Result<(), Failure> {
    let host = cpal::default_host();
    let host_name = host.id().name();
    let default = host.default_input_device();
    let default_id = default
        .as_ref()
        .and_then(|d| d.id().ok())
        .map(|id| id.to_string());
    let default_state = match &default {
        None => "none".to_string(),
        Some(d) => {
            let id = default_id.as_deref().unwrap_or("(no id)");
            match d.default_input_config() {
                Ok(c) => format!("{id} ({})", describe_config(&c)),
                Err(e) => format!("{id}, unusable: {e}"),
            }
        }
    };
    println!("host {host_name}; default input: {default_state}");
    let devices: Vec<cpal::Device> = match host.input_devices() {
        Ok(devices) => devices.collect(),
        Err(e) => {
            return Err(Failure::Input(format!(
                "cannot list the input devices of host {host_name}: {e}"
            )))
        }
    };
    if devices.is_empty() {
        return Err(Failure::Input(format!(
            "no input devices found (host {host_name})"
        )));
    }
    for device in &devices {
        let id = device
            .id()
            .map(|id| id.to_string())
            .unwrap_or_else(|_| "(no id)".into());
        let name = device
            .description()
            .map(|d| d.to_string())
            .unwrap_or_default();
        println!("{id}  {name}");
        match device.default_input_config() {
            Ok(c) => println!("    default: {}", describe_config(&c)),
            Err(e) => println!("    default: unusable ({e})"),
        }
        match device.supported_input_configs() {
            Ok(configs) => {
                for line in summarize_configs(configs) {
                    println!("    supports: {line}");
                }
            }
            Err(e) => println!("    supports: unknown ({e})"),
        }
    }
    Ok(())
}

fn describe_config(c: &cpal::SupportedStreamConfig) -> String {
    format!(
        "{} Hz, {} ch, {}",
        c.sample_rate(),
        c.channels(),
        c.sample_format()
    )
}

/// Folds config ranges into lines of `rates, channels: formats`.
fn summarize_configs(
    configs: impl Iterator<Item = cpal::SupportedStreamConfigRange>,
) -> Vec<String> {
    // (rates, format) -> channel counts, then (rates, channel counts) -> formats; first-seen order.
    let mut channels: Vec<((u32, u32, SampleFormat), Vec<u16>)> = Vec::new();
    for c in configs {
        let key = (c.min_sample_rate(), c.max_sample_rate(), c.sample_format());
        match channels.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(c.channels()),
            None => channels.push((key, vec![c.channels()])),
        }
    }
    let mut lines: Vec<((u32, u32, String), Vec<String>)> = Vec::new();
    for ((min, max, format), list) in channels {
        let key = (min, max, number_ranges(list));
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, formats)) => formats.push(format.to_string()),
            None => lines.push((key, vec![format.to_string()])),
        }
    }
    lines
        .into_iter()
        .map(|((min, max, ch), formats)| {
            let rates = if min == max {
                format!("{min} Hz")
            } else {
                format!("{min}..={max} Hz")
            };
            format!("{rates}, {ch} ch: {}", formats.join(", "))
        })
        .collect()
}

/// `[1, 2, 3, 6]` -> `1..=3, 6`.
fn number_ranges(mut v: Vec<u16>) -> String {
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}..={}", v[i], v[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// The default input device, or the one `--device` names.
pub fn pick_device(host: &cpal::Host, wanted: Option<&str>) -> Result<cpal::Device, Failure> {
    let host_name = host.id().name();
    let Some(wanted) = wanted else {
        return host.default_input_device().ok_or_else(|| {
            Failure::Input(format!(
                "no input device found (host {host_name}); {TRY_DEVICES}"
            ))
        });
    };
    let devices: Vec<cpal::Device> = host
        .input_devices()
        .map_err(|e| {
            Failure::Input(format!(
                "cannot list the input devices of host {host_name}: {e}"
            ))
        })?
        .collect();
    let wanted_lc = wanted.to_lowercase();
    let keys = |d: &cpal::Device| -> Vec<String> {
        let mut keys = Vec::new();
        if let Ok(id) = d.id() {
            keys.push(id.to_string().to_lowercase());
            keys.push(id.id().to_lowercase());
        }
        if let Ok(desc) = d.description() {
            keys.push(desc.name().to_lowercase());
        }
        keys
    };
    if let Some(exact) = devices.iter().find(|d| keys(d).contains(&wanted_lc)) {
        return Ok(exact.clone());
    }
    let partial: Vec<&cpal::Device> = devices
        .iter()
        .filter(|d| keys(d).iter().any(|k| k.contains(&wanted_lc)))
        .collect();
    match partial.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::Input(format!(
            "no input device matches \"{wanted}\" (host {host_name}); {TRY_DEVICES}"
        ))),
        many => Err(Failure::Input(format!(
            "\"{wanted}\" matches {} input devices ({}); give the full id from `--list-devices`",
            many.len(),
            many.iter()
                .filter_map(|d| d.id().ok().map(|id| id.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
