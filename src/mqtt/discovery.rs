//! Home Assistant MQTT discovery: the retained config payloads that make one device with
//! its entities appear (crying, reason, confidence, the per-episode event and the
//! diagnostics), and the empty payloads that make it disappear again. Pure functions of
//! the topics and the device description, so tests check them without a broker.
//!
//! Every entity is available while `<base>/status` says `online`. The entities that say
//! what the room sounds like now (crying, reason, confidence) also need the microphone:
//! they are unavailable unless the retained diagnostics say the audio is `running`.
//! Without that, a monitor whose microphone was unplugged, is missing at boot or
//! delivers only silence would show "Clear" to the parents, while it hears nothing; the
//! diagnostic sensors stay available to say why. The episode event does not need the
//! microphone: an episode that a drop-out cut short, or one delivered from the queue
//! after the broker came back, arrives after the audio stopped, and Home Assistant
//! drops an event that reaches an unavailable entity.

use serde_json::{json, Value};

use super::{DeviceInfo, Topics};
use crate::events::UNCERTAIN;
use crate::source::AudioState;

/// One entity: component, object id suffix and its specific keys.
struct Entity {
    component: &'static str,
    key: &'static str,
    config: Value,
    /// Its state comes from listening: unavailable while the audio is not running.
    hears: bool,
}

/// Renders `online` from the retained diagnostics only while the audio is running;
/// connecting, lost, stalled and ended render `offline`.
fn audio_availability_template() -> String {
    format!(
        "{{{{ 'online' if value_json.audio_state == '{}' else 'offline' }}}}",
        AudioState::Running.name()
    )
}

/// The diagnostic sensors: key in the diagnostics JSON, name, unit, device class.
const DIAGNOSTICS: [(&str, &str, Option<&str>, Option<&str>); 6] = [
    ("noise_floor_dbfs", "Noise floor", Some("dBFS"), None),
    ("audio_state", "Audio device", None, None),
    (
        "last_inference_ms",
        "Last inference",
        Some("ms"),
        Some("duration"),
    ),
    ("gate_openings_per_hour", "Gate openings", Some("/h"), None),
    ("events_queued", "Events queued", None, None),
    ("events_dropped", "Events dropped", None, None),
];

fn options(device: &DeviceInfo) -> Vec<String> {
    let mut o: Vec<String> = device.labels.clone();
    if !o.iter().any(|l| l == UNCERTAIN) {
        o.push(UNCERTAIN.into());
    }
    o
}

fn entities(t: &Topics, device: &DeviceInfo) -> Vec<Entity> {
    let mut list = vec![
        Entity {
            component: "binary_sensor",
            key: "crying",
            config: json!({
                "name": "Crying",
                "device_class": "sound",
                "state_topic": t.crying,
                "payload_on": "ON",
                "payload_off": "OFF",
            }),
            hears: true,
        },
        Entity {
            component: "sensor",
            key: "reason",
            config: json!({
                "name": "Cry reason",
                "device_class": "enum",
                "options": options(device),
                "state_topic": t.reason,
                "icon": "mdi:emoticon-cry-outline",
            }),
            hears: true,
        },
        Entity {
            component: "sensor",
            key: "confidence",
            config: json!({
                "name": "Cry reason confidence",
                "state_topic": t.confidence,
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "suggested_display_precision": 0,
            }),
            hears: true,
        },
        Entity {
            component: "event",
            key: "episode",
            config: json!({
                "name": "Cry episode",
                "state_topic": t.episode,
                "event_types": options(device),
            }),
            hears: false,
        },
    ];
    for (key, name, unit, class) in DIAGNOSTICS {
        let mut config = json!({
            "name": name,
            "entity_category": "diagnostic",
            "state_topic": t.diagnostics,
            "value_template": format!("{{{{ value_json.{key} }}}}"),
        });
        if let Some(unit) = unit {
            config["unit_of_measurement"] = unit.into();
            config["state_class"] = "measurement".into();
        }
        if let Some(class) = class {
            config["device_class"] = class.into();
        }
        if key == "events_dropped" {
            config["state_class"] = "total_increasing".into();
        }
        list.push(Entity {
            component: "sensor",
            key,
            config,
            hears: false,
        });
    }
    list
}

fn config_topic(t: &Topics, component: &str, key: &str) -> String {
    format!(
        "{}/{component}/{}_{key}/config",
        t.discovery_prefix, t.node_id
    )
}

/// The discovery messages (topic, retained payload), one per entity.
pub fn discovery_messages(
    t: &Topics,
    device_name: &str,
    device: &DeviceInfo,
) -> Vec<(String, String)> {
    let models: Vec<String> = device
        .models
        .iter()
        .map(|m| format!("{} {}", m.name, m.version))
        .collect();
    let device_block = json!({
        "identifiers": [format!("babycryd_{}", t.node_id)],
        "name": device_name,
        "manufacturer": "babycryd",
        "model": if models.is_empty() { "babycryd".to_owned() } else { format!("babycryd ({})", models.join(", ")) },
        "sw_version": device.sw_version,
    });
    let origin = json!({
        "name": "babycryd",
        "sw_version": device.sw_version,
        "support_url": env!("CARGO_PKG_REPOSITORY"),
    });
    entities(t, device)
        .into_iter()
        .map(|e| {
            let mut c = e.config;
            let id = format!("{}_{}", t.node_id, e.key);
            c["unique_id"] = id.into();
            let mut availability = vec![json!({
                "topic": t.status,
                "payload_available": "online",
                "payload_not_available": "offline",
            })];
            if e.hears {
                availability.push(json!({
                    "topic": t.diagnostics,
                    "value_template": audio_availability_template(),
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }));
            }
            c["availability"] = availability.into();
            c["availability_mode"] = "all".into();
            c["qos"] = 1.into();
            c["device"] = device_block.clone();
            c["origin"] = origin.clone();
            (
                config_topic(t, e.component, e.key),
                serde_json::to_string(&c).expect("discovery JSON"),
            )
        })
        .collect()
}

/// The discovery config topic of every entity (an empty retained message on each makes
/// Home Assistant remove the entities).
fn config_topics(t: &Topics) -> Vec<String> {
    let device = DeviceInfo {
        labels: vec![],
        models: vec![],
        sw_version: String::new(),
    };
    entities(t, &device)
        .into_iter()
        .map(|e| config_topic(t, e.component, e.key))
        .collect()
}

/// The retained states of the device, beside its discovery configs.
pub(crate) fn state_topics(t: &Topics) -> [&String; 5] {
    [
        &t.crying,
        &t.reason,
        &t.confidence,
        &t.diagnostics,
        &t.status,
    ]
}

/// Every retained topic of the device: its discovery configs, then its
/// [`state_topics`]. Empty payloads on all of them leave nothing of it on the broker.
pub(crate) fn retained_topics(t: &Topics) -> Vec<String> {
    let mut topics = config_topics(t);
    topics.extend(state_topics(t).into_iter().cloned());
    topics
}

/// The event entity's payload for an episode end.
pub(crate) fn episode_payload(event: &crate::events::Event) -> Option<String> {
    match &event.kind {
        crate::events::EventKind::EpisodeEnd {
            episode,
            duration_s,
            dominant_reason,
            confidence,
            ..
        } => Some(
            json!({
                "event_type": dominant_reason,
                "episode": episode,
                "duration_s": duration_s,
                "confidence": confidence,
                "id": event.id,
                "timestamp": event.timestamp,
            })
            .to_string(),
        ),
        _ => None,
    }
}
