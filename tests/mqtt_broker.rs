//! The MQTT client against a real Mosquitto, started by each test on a free port with its
//! own config file in a temporary directory and killed on drop. Subscribers are real
//! rumqttc clients. Two tests script the broker's side of the connection instead: a PUBACK
//! and the end of the connection in one TCP segment, an instant a killed Mosquitto hits
//! only by chance, and a broker that drops every connection right after accepting it.

mod broker_common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use babycry::events::{Diagnostics, Event, EventKind, Update, WindowResult};
use babycry::mqtt::{DeviceInfo, MqttConfig, MqttHandle, States};
use broker_common::*;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;

fn config(port: u16, node: &str) -> MqttConfig {
    MqttConfig {
        host: "127.0.0.1".into(),
        port,
        node_id: node.into(),
        spool: false,
        ..MqttConfig::default()
    }
}

fn device() -> DeviceInfo {
    DeviceInfo {
        labels: vec!["hungry".into(), "tired".into(), "belly_pain".into()],
        models: vec![babycry::events::ModelVersion {
            name: "cry-reason".into(),
            version: "1".into(),
        }],
        sw_version: "0.1.0-test".into(),
    }
}

fn window_event(episode: u64, index: u32) -> Event {
    Event::new(
        EventKind::Window {
            episode,
            index,
            result: WindowResult {
                start_s: f64::from(index) * 7.0,
                end_s: f64::from(index) * 7.0 + 7.0,
                reason: "hungry".into(),
                confidence: 0.75,
                probabilities: BTreeMap::from([("hungry".into(), 0.75), ("tired".into(), 0.25)]),
                cry_probability: Some(0.9),
                latency_ms: 12.0,
            },
        },
        vec![],
    )
}

fn episode_end(episode: u64) -> Event {
    Event::new(
        EventKind::EpisodeEnd {
            episode,
            start_s: 0.0,
            end_s: 30.0,
            duration_s: 30.0,
            dominant_reason: "tired".into(),
            confidence: 0.6,
            probabilities: BTreeMap::from([("tired".into(), 0.6)]),
            windows: 4,
        },
        vec![],
    )
}

fn diagnostics() -> Diagnostics {
    Diagnostics {
        noise_floor_dbfs: Some(-62.5),
        audio_state: "running".into(),
        last_inference_ms: Some(41.0),
        gate_openings_per_hour: 3.0,
    }
}

/// Checks one discovery config against the Home Assistant conventions.
fn check_discovery(topic: &str, payload: &str, base: &str, labels: &[&str]) -> (String, Value) {
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(parts.len(), 4, "{topic}");
    assert_eq!((parts[0], parts[3]), ("homeassistant", "config"), "{topic}");
    let component = parts[1];
    assert!(
        ["binary_sensor", "sensor", "event"].contains(&component),
        "{topic}"
    );
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    assert!(id_ok(parts[2]), "{topic}");
    let c: Value = serde_json::from_str(payload).unwrap();
    let unique = c["unique_id"].as_str().unwrap();
    assert!(id_ok(unique) && unique == parts[2], "{topic}: {unique}");
    for key in ["name", "state_topic", "availability", "device", "origin"] {
        assert!(!c[key].is_null(), "{topic} lacks {key}");
    }
    // Available while the daemon is online and, for what it hears, while the audio runs.
    assert_eq!(c["availability_mode"], "all", "{topic}");
    let availability = c["availability"].as_array().unwrap();
    assert_eq!(availability[0]["topic"], format!("{base}/status"));
    for a in availability {
        assert_eq!(
            (
                a["payload_available"].as_str(),
                a["payload_not_available"].as_str()
            ),
            (Some("online"), Some("offline")),
            "{topic}"
        );
    }
    let audio_topics: Vec<&str> = availability[1..]
        .iter()
        .map(|a| a["topic"].as_str().unwrap())
        .collect();
    let hears = HEARING.contains(&unique.trim_start_matches("testnode_"));
    let diagnostics_topic = format!("{base}/diagnostics");
    let expected: &[&str] = if hears { &[&diagnostics_topic] } else { &[] };
    assert_eq!(audio_topics, expected, "{topic}");
    let state = c["state_topic"].as_str().unwrap();
    assert!(state.starts_with(&format!("{base}/")), "{topic}: {state}");
    assert!(!state.contains(['+', '#']));
    let dev = &c["device"];
    assert_eq!(dev["identifiers"][0], "babycryd_testnode");
    for key in ["name", "manufacturer", "model", "sw_version"] {
        assert!(dev[key].is_string(), "{topic}: device.{key}");
    }
    assert_eq!(c["origin"]["name"], "babycryd");
    assert!(c["origin"]["sw_version"].is_string() && c["origin"]["support_url"].is_string());
    let mut options: Vec<&str> = labels.to_vec();
    options.push("uncertain");
    match (component, unique.trim_start_matches("testnode_")) {
        ("binary_sensor", "crying") => {
            assert_eq!(c["device_class"], "sound");
            assert_eq!(
                (c["payload_on"].as_str(), c["payload_off"].as_str()),
                (Some("ON"), Some("OFF"))
            );
            assert_eq!(state, format!("{base}/crying"));
        }
        ("sensor", "reason") => {
            assert_eq!(c["device_class"], "enum");
            assert_eq!(c["options"], serde_json::json!(options));
            assert!(c["unit_of_measurement"].is_null() && c["state_class"].is_null());
        }
        ("sensor", "confidence") => {
            assert_eq!(c["unit_of_measurement"], "%");
            assert_eq!(c["state_class"], "measurement");
        }
        ("event", "episode") => {
            assert_eq!(c["event_types"], serde_json::json!(options));
            assert_eq!(state, format!("{base}/episode"));
        }
        ("sensor", _) => {
            assert_eq!(c["entity_category"], "diagnostic", "{topic}");
            assert_eq!(state, format!("{base}/diagnostics"));
            assert!(c["value_template"]
                .as_str()
                .unwrap()
                .contains("value_json."));
        }
        other => panic!("unexpected entity {other:?}"),
    }
    (unique.to_owned(), c)
}

#[tokio::test]
async fn discovery_states_and_events_arrive_with_the_right_retain_flags() {
    let broker = Broker::start();
    let base = "babycry/testnode";
    let live = Subscriber::start(broker.port, &["babycry/testnode/#", "homeassistant/#"]).await;
    let (handle, task) = MqttHandle::spawn(&config(broker.port, "testnode"), device());
    live.wait_for(&format!("{base}/status"), "online", Duration::from_secs(10))
        .await;

    handle.send(Update::Crying(true));
    handle.send(Update::Reason {
        reason: "hungry".into(),
        confidence: 0.8,
    });
    handle.send(Update::Diagnostics(diagnostics()));
    let sent: Vec<Event> = vec![window_event(1, 0), window_event(1, 1), episode_end(1)];
    for e in &sent {
        handle.send(Update::Event(e.clone()));
    }
    handle.send(Update::Crying(false));
    let event_topic = format!("{base}/event");
    wait_until("every event arrived", Duration::from_secs(10), || {
        live.on(&event_topic).len() >= sent.len()
    })
    .await;
    live.wait_for(&format!("{base}/crying"), "OFF", Duration::from_secs(5))
        .await;
    let events = live.on(&event_topic);
    let payloads: Vec<&str> = events.iter().map(|m| m.payload.as_str()).collect();
    let expected: Vec<String> = sent.iter().map(Event::to_json).collect();
    assert_eq!(
        payloads, expected,
        "events arrive once, in order, unchanged"
    );
    // The event entity's message is queued behind the episode end's record, sent once its
    // PUBACK is in: it may come after `crying` OFF. A second one would come right after.
    let episode_topic = format!("{base}/episode");
    wait_until("the episode event", Duration::from_secs(10), || {
        !live.on(&episode_topic).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let episodes = live.on(&episode_topic);
    assert_eq!(episodes.len(), 1, "{episodes:?}");
    let v: Value = serde_json::from_str(&episodes[0].payload).unwrap();
    assert_eq!(v["event_type"], "tired");

    // A late subscriber gets exactly the retained topics, flagged retained.
    let late = Subscriber::start(broker.port, &["babycry/testnode/#", "homeassistant/#"]).await;
    // status, crying, reason, confidence, diagnostics and the 10 discovery configs.
    wait_until("the retained messages", Duration::from_secs(5), || {
        late.all().len() >= 15
    })
    .await;
    let retained: BTreeMap<String, Seen> = late
        .all()
        .into_iter()
        .map(|m| (m.topic.clone(), m))
        .collect();
    assert!(retained.values().all(|m| m.retain), "{retained:?}");
    assert_eq!(retained[&format!("{base}/status")].payload, "online");
    assert_eq!(retained[&format!("{base}/crying")].payload, "OFF");
    assert_eq!(retained[&format!("{base}/reason")].payload, "hungry");
    assert_eq!(retained[&format!("{base}/confidence")].payload, "80.0");
    let diag: Value =
        serde_json::from_str(&retained[&format!("{base}/diagnostics")].payload).unwrap();
    assert_eq!(diag["noise_floor_dbfs"], -62.5);
    assert_eq!(diag["audio_state"], "running");
    assert_eq!(diag["events_dropped"], 0);
    assert!(
        !retained.contains_key(&event_topic),
        "events are not retained"
    );
    assert!(
        !retained.contains_key(&format!("{base}/episode")),
        "the event entity is not retained"
    );

    let configs: Vec<&Seen> = retained
        .values()
        .filter(|m| m.topic.starts_with("homeassistant/"))
        .collect();
    let checked: BTreeMap<String, Value> = configs
        .iter()
        .map(|m| {
            check_discovery(
                &m.topic,
                &m.payload,
                base,
                &["hungry", "tired", "belly_pain"],
            )
        })
        .collect();
    assert_eq!(checked.len(), 10, "{:?}", checked.keys());
    // With the daemon online and the audio running, Home Assistant shows every entity.
    let latest = |t: &str| retained.get(t).map(|m| m.payload.clone());
    let mut every = [&HEARING[..], &WHILE_ONLINE].concat();
    every.sort_unstable();
    assert_eq!(available_ids(&checked, "testnode_", &latest), every);

    // The microphone is lost: what the daemon hears now becomes unavailable, while the
    // diagnostics (the audio device sensor among them) stay to say why, and the episode
    // event stays to fire for an episode the loss cut short: its message comes after the
    // diagnostics that say `lost`, and Home Assistant drops an event that reaches an
    // unavailable entity.
    handle.send(Update::Diagnostics(Diagnostics {
        audio_state: "lost".into(),
        ..diagnostics()
    }));
    let diagnostics_topic = format!("{base}/diagnostics");
    wait_until(
        "the lost microphone's diagnostics",
        Duration::from_secs(5),
        || {
            late.on(&diagnostics_topic)
                .last()
                .is_some_and(|m| m.payload.contains("\"lost\""))
        },
    )
    .await;
    let latest = |t: &str| late.on(t).last().map(|m| m.payload.clone());
    assert_eq!(available_ids(&checked, "testnode_", &latest), WHILE_ONLINE);

    // Clean shutdown: offline, published by the client itself (not the will).
    handle.shutdown(Duration::from_secs(5)).await;
    task.await.unwrap();
    late.wait_for(&format!("{base}/status"), "offline", Duration::from_secs(5))
        .await;
}

/// A client that publishes as Home Assistant would, with a packet limit of 1 MiB; the
/// task that drives it.
fn fake_home_assistant(port: u16) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut ha_opts = MqttOptions::new("fake-ha", "127.0.0.1", port);
    ha_opts.set_max_packet_size(1 << 20, 1 << 20);
    let (ha, mut ha_loop) = AsyncClient::new(ha_opts, 10);
    let poller = tokio::spawn(async move { while ha_loop.poll().await.is_ok() {} });
    (ha, poller)
}

/// 300 KiB on Home Assistant's status: over the daemon's 256 KiB packet limit.
async fn publish_over_the_size_limit(ha: &AsyncClient, retain: bool) {
    ha.publish(
        "homeassistant/status",
        QoS::AtLeastOnce,
        retain,
        vec![b'x'; 300 * 1024],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn home_assistant_birth_message_triggers_rediscovery_and_junk_is_ignored() {
    let broker = Broker::start();
    let (handle, _task) = MqttHandle::spawn(&config(broker.port, "testnode"), device());
    wait_until("connected", Duration::from_secs(10), || {
        handle.status().discoveries == 1
    })
    .await;
    let live = Subscriber::start(broker.port, &["homeassistant/+/+/config"]).await;
    wait_until("the retained configs", Duration::from_secs(5), || {
        live.all().len() >= 10
    })
    .await;
    let retained_configs = live.all().len();
    assert_eq!(retained_configs, 10);

    let (ha, poller) = fake_home_assistant(broker.port);
    // Junk on Home Assistant's status and on the daemon's own topics (commands it does
    // not have): wrong words, invalid UTF-8, a retained offline, payloads up to the
    // client's 256 KiB packet limit.
    let junk: [(&str, Vec<u8>, bool); 8] = [
        ("homeassistant/status", b"bogus".to_vec(), false),
        ("homeassistant/status", vec![0xff, 0xfe, 0x00, 0x80], false),
        ("homeassistant/status", b"online ".repeat(36_000), false),
        ("homeassistant/status/extra", b"online".to_vec(), false),
        ("babycry/testnode/crying", b"ON".to_vec(), false),
        ("babycry/testnode/set", vec![0xff; 200_000], false),
        (
            "babycry/testnode/command",
            b"{\"rediscover\": true}".to_vec(),
            false,
        ),
        ("homeassistant/status", b"offline".to_vec(), true),
    ];
    for (topic, payload, retain) in junk {
        ha.publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = handle.status();
    assert_eq!(st.discoveries, 1, "junk must not trigger discovery");
    assert!(
        st.connected && st.connections == 1 && st.failures == 0,
        "junk must not cost the connection: {st:?}"
    );

    let asked = Instant::now();
    ha.publish("homeassistant/status", QoS::AtLeastOnce, false, "online")
        .await
        .unwrap();
    wait_until("rediscovery", Duration::from_secs(5), || {
        live.all().len() >= 2 * retained_configs
    })
    .await;
    let delay = asked.elapsed();
    assert!(
        delay >= Duration::from_millis(400),
        "rediscovery waits a random delay: {delay:?}"
    );
    assert_eq!(handle.status().discoveries, 2);
    assert!(live.all()[retained_configs..].iter().all(|m| !m.retain));

    // Over the 256 KiB packet limit: MQTT 3.1.1 cannot refuse it, so rumqttc drops the
    // connection; the link reconnects (backoff from 1..2 s) and announces itself again.
    publish_over_the_size_limit(&ha, false).await;
    wait_until("reconnected", Duration::from_secs(10), || {
        let st = handle.status();
        st.connected && st.connections == 2
    })
    .await;
    let st = handle.status();
    assert_eq!((st.failures, st.discoveries), (1, 3), "{st:?}");
    // It says which topic, and how to clear a retained one, which would come back at
    // every connection.
    let said = st.last_error.unwrap_or_default();
    assert!(
        said.contains("of 307224 bytes on homeassistant/status")
            && said.contains("mosquitto_pub -r -n -t homeassistant/status"),
        "{said}"
    );
    poller.abort();
    handle.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn events_wait_for_a_broker_that_is_down_at_boot_and_overflow_drops_the_oldest() {
    let port = free_port();
    let cfg = MqttConfig {
        queue_size: 5,
        ..config(port, "testnode")
    };
    let (handle, _task) = MqttHandle::spawn(&cfg, device());
    handle.send(Update::Crying(true));
    let sent: Vec<Event> = (0..8).map(|i| window_event(1, i)).collect();
    let start = Instant::now();
    for e in &sent {
        handle.send(Update::Event(e.clone()));
    }
    // A send that waited for the broker would wait for good: it never answers.
    let send_time = start.elapsed();
    assert!(
        send_time < Duration::from_secs(5),
        "send never blocks: {send_time:?}"
    );
    handle.send(Update::Diagnostics(diagnostics()));
    wait_until("a failed attempt", Duration::from_secs(5), || {
        handle.status().failures >= 1
    })
    .await;
    let st = handle.status();
    assert!(!st.connected);
    assert_eq!((st.queued, st.dropped), (5, 3));
    assert!(st.last_error.unwrap().contains("cannot reach broker"));

    let broker = Broker::start_on(port);
    let live = Subscriber::start(broker.port, &["babycry/testnode/#"]).await;
    wait_until("the queue drains", Duration::from_secs(15), || {
        live.on("babycry/testnode/event").len() >= 5
    })
    .await;
    let got: Vec<String> = live
        .on("babycry/testnode/event")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let expected: Vec<String> = sent[3..].iter().map(Event::to_json).collect();
    assert_eq!(
        got, expected,
        "the newest five, in order, with their original timestamps"
    );
    live.wait_for("babycry/testnode/crying", "ON", Duration::from_secs(5))
        .await;
    let diag = live.on("babycry/testnode/diagnostics");
    let v: Value = serde_json::from_str(&diag.last().unwrap().payload).unwrap();
    assert_eq!(v["events_dropped"], 3);
    wait_until("every PUBACK counted", Duration::from_secs(5), || {
        handle.status().queued == 0
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// The broker SIGKILLed three times in the middle of a stream of events 3 ms apart, at
/// moments that do not wait for any acknowledgement, and restarted: every event arrives
/// exactly once, in order. Before events went out one at a time, the broker's Nagle delay
/// held the last PUBACK back and this duplicated one event per kill.
///
/// The kills land 2, 5 and 20 ms after a send (`BABYCRY_KILL_DELAYS_US`, microseconds,
/// overrides them). One instant remains where QoS 1 cannot help: a broker that dies after
/// forwarding an event and before sending its PUBACK. Measured: with
/// `BABYCRY_KILL_DELAYS_US=0,200,2000` a duplicate in 4 of 120 runs, each one a broker whose
/// log ends at the forward, without the PUBACK (7 of 60 before a PUBACK read together with
/// the end of the connection counted); `0,0,0` none in 40 runs; `0,2000,20000` none in 40;
/// the defaults none in 40 (and none in 92 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_loses_and_duplicates_nothing() {
    stream_across_broker_restarts(Broker::kill, &[2_000, 5_000, 20_000]).await;
}

/// The same stream with the broker stopped by SIGTERM, as a `systemctl restart` or a
/// container update stops it, right after a send (`BABYCRY_KILL_DELAYS_US`, default 0, 200
/// and 2000 µs, the SIGKILL timings that still duplicated): Mosquitto handles a signal
/// between packets, so an event it forwarded has its PUBACK written before it exits, and
/// nothing may arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_mid_stream_delivers_every_event_exactly_once() {
    stream_across_broker_restarts(Broker::terminate, &[0, 200, 2_000]).await;
}

/// Streams 200 events 3 ms apart through a broker that `stop` ends three times, each time
/// `delays` (µs) after a send, and restarts; asserts every event arrived exactly once, in
/// order, and the current state was republished to the restarted broker.
async fn stream_across_broker_restarts(stop: fn(&mut Broker), delays: &[u64]) {
    let mut broker = Broker::start();
    let live = Subscriber::start(broker.port, &["babycry/testnode/event"]).await;
    let (handle, _task) = MqttHandle::spawn(&config(broker.port, "testnode"), device());
    wait_until("connected", Duration::from_secs(10), || {
        handle.status().connected
    })
    .await;
    handle.send(Update::Crying(true));
    let sent: Vec<Event> = (0..200).map(|i| window_event(2, i)).collect();
    let delays: Vec<u64> = std::env::var("BABYCRY_KILL_DELAYS_US")
        .map(|v| {
            v.split(',')
                .map(|d| {
                    d.trim()
                        .parse()
                        .expect("BABYCRY_KILL_DELAYS_US: microseconds, comma-separated")
                })
                .collect()
        })
        .unwrap_or_else(|_| delays.to_vec());
    assert_eq!(delays.len(), 3, "BABYCRY_KILL_DELAYS_US: three delays");
    // (event index, delay after sending it).
    let kills: Vec<(usize, Duration)> = [40, 95, 150]
        .into_iter()
        .zip(delays.into_iter().map(Duration::from_micros))
        .collect();
    let mut restarts = 0;
    let mut killed_after = Vec::new();
    for (i, e) in sent.iter().enumerate() {
        handle.send(Update::Event(e.clone()));
        let Some(&(_, delay)) = kills.iter().find(|(at, _)| *at == i) else {
            tokio::time::sleep(Duration::from_millis(3)).await;
            continue;
        };
        std::thread::sleep(delay);
        stop(&mut broker);
        // What the broker did last (it logs each packet before sending it): a duplicate
        // comes from a kill after "Sending PUBLISH to test-sub..." and before "Sending
        // PUBACK to babycryd...".
        let log = broker.log();
        let lines: Vec<&str> = log.lines().collect();
        killed_after.push(format!(
            "stopped at event {i}: {:?}",
            &lines[lines.len().saturating_sub(3)..]
        ));
        // The subscriber (retrying every 100 ms) must be back before the client's next
        // attempt (>= 1 s after the loss), or the events it resends reach no one: the
        // broker comes back at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.restart();
        restarts += 1;
        live.wait_subscribed(1 + restarts).await;
        // Each kill must meet a live connection with events on it.
        wait_until("the daemon reconnected", Duration::from_secs(70), || {
            handle.status().connections > restarts
        })
        .await;
    }
    let streamed = Instant::now();
    wait_until("every event arrived", Duration::from_secs(30), || {
        live.on("babycry/testnode/event").len() >= sent.len()
    })
    .await;
    eprintln!(
        "broker restart: all {} events delivered {:?} after the last send",
        sent.len(),
        streamed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<String> = live
        .on("babycry/testnode/event")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let expected: Vec<String> = sent.iter().map(Event::to_json).collect();
    let index = |p: &String| expected.iter().position(|e| e == p);
    let order: Vec<Option<usize>> = got.iter().map(index).collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "exactly once: {order:?}\n{}",
        killed_after.join("\n")
    );
    assert_eq!(got, expected, "in order, unchanged");
    let st = handle.status();
    assert!(st.connections == 4 && st.failures >= 3, "{st:?}");
    // The restarted broker knows nothing: the current state was republished.
    let late = Subscriber::start(broker.port, &["babycry/testnode/crying"]).await;
    late.wait_for("babycry/testnode/crying", "ON", Duration::from_secs(5))
        .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// Run in a child process by the tests that SIGKILL it: connects as node `killme` and
/// sends two events.
#[test]
#[ignore = "helper: run in a child process"]
fn child_process_holding_a_connection() {
    // Only meaningful in the child (`--include-ignored` alone must not pass for nothing).
    let port = std::env::var("BABYCRY_MQTT_CHILD_PORT")
        .expect("run by the SIGKILL tests with BABYCRY_MQTT_CHILD_PORT set");
    let mut cfg = config(port.parse().unwrap(), "killme");
    if let Ok(state) = std::env::var("BABYCRY_MQTT_CHILD_STATE") {
        cfg = MqttConfig { spool: true, ..cfg }.with_state_dir(state.into());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (handle, _task) = MqttHandle::spawn(&cfg, device());
        handle.send(Update::Event(window_event(5, 0)));
        handle.send(Update::Event(window_event(5, 1)));
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

#[tokio::test]
async fn a_killed_process_leaves_offline_through_the_last_will() {
    let broker = Broker::start();
    let live = Subscriber::start(broker.port, &["babycry/killme/status"]).await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_holding_a_connection",
            "--ignored",
            "--nocapture",
        ])
        .env("BABYCRY_MQTT_CHILD_PORT", broker.port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    live.wait_for("babycry/killme/status", "online", Duration::from_secs(20))
        .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = Instant::now();
    live.wait_for("babycry/killme/status", "offline", Duration::from_secs(10))
        .await;
    let took = killed.elapsed();
    eprintln!("last will seen {took:?} after SIGKILL");
    let late = Subscriber::start(broker.port, &["babycry/killme/status"]).await;
    let m = late
        .wait_for("babycry/killme/status", "offline", Duration::from_secs(5))
        .await;
    assert!(m.retain, "the last will is retained");
}

/// A start after a crash mid-cry: the broker still holds `crying` ON and the last will's
/// `offline`, retained. The new connection says `crying` OFF before `online`, so Home
/// Assistant never sees the sensor available and ON (an automation on "to: on" would
/// take it for a cry). Before, `online` went first.
#[tokio::test]
async fn a_start_after_a_crash_mid_cry_says_off_before_online() {
    let broker = Broker::start();
    let mut opts = MqttOptions::new("crashed-daemon", "127.0.0.1", broker.port);
    opts.set_clean_session(true);
    let (left, mut left_loop) = AsyncClient::new(opts, 10);
    let poller = tokio::spawn(async move { while left_loop.poll().await.is_ok() {} });
    for (topic, payload) in [
        ("babycry/crashed/crying", "ON"),
        ("babycry/crashed/status", "offline"),
    ] {
        left.publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }
    let live = Subscriber::start(broker.port, &["babycry/crashed/#"]).await;
    wait_until("the retained leftovers", Duration::from_secs(5), || {
        live.all().len() == 2
    })
    .await;
    poller.abort();
    let (handle, _task) = MqttHandle::spawn(&config(broker.port, "crashed"), device());
    live.wait_for("babycry/crashed/status", "online", Duration::from_secs(20))
        .await;
    let fresh: Vec<(String, String)> = live.all()[2..]
        .iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect();
    let at = |topic: &str, payload: &str| {
        fresh
            .iter()
            .position(|(t, p)| t == topic && p == payload)
            .unwrap_or_else(|| panic!("no {topic} = {payload} in {fresh:?}"))
    };
    assert!(
        at("babycry/crashed/crying", "OFF") < at("babycry/crashed/status", "online"),
        "{fresh:?}"
    );
    // `online` is the last of the announcement.
    assert_eq!(
        at("babycry/crashed/status", "online"),
        fresh.len() - 1,
        "{fresh:?}"
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

/// Sets `user`'s password in a Mosquitto password file (`create`: a new file).
fn set_password(file: &Path, user: &str, password: &str, create: bool) {
    let ok = Command::new("mosquitto_passwd")
        .args(if create { &["-b", "-c"][..] } else { &["-b"] })
        .arg(file)
        .args([user, password])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A broker that takes only `user` with `password`; and its password file.
fn passwd_broker(user: &str, password: &str) -> (Broker, PathBuf) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    set_password(&pw, user, password, true);
    let conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous false\nuser root\npassword_file {}\n",
        pw.display()
    );
    let mut b = Broker::start_on_conf(port, &conf);
    b.keep.push(dir);
    (b, pw)
}

/// CPU time of the calling thread. A `#[tokio::test]` runs its tasks (the link and the
/// rumqttc driver among them) on its own thread, so this is the client's CPU, not that of
/// the other tests running beside it in this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn a_wrong_password_is_reported_clearly_and_retried_with_backoff() {
    let (broker, _) = passwd_broker("babycry", "right-one");
    let wrong = MqttConfig {
        username: "babycry".into(),
        password: babycry::mqtt::Secret("not-the-password-42".into()),
        ..config(broker.port, "testnode")
    };
    let cpu0 = cpu_seconds();
    let (handle, _task) = MqttHandle::spawn(&wrong, device());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cpu = cpu_seconds() - cpu0;
    let st = handle.status();
    eprintln!(
        "wrong password: {} attempts in 4 s, {cpu:.3} s CPU",
        st.failures
    );
    assert!(!st.connected);
    assert!((2..=4).contains(&st.failures), "backoff: {st:?}");
    let err = st.last_error.unwrap();
    assert!(
        err.contains("refused the credentials (username \"babycry\")"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password-42"),
        "the password is never logged: {err}"
    );
    assert!(cpu < 0.5, "no spinning: {cpu} s CPU in 4 s");
    handle.shutdown(Duration::from_secs(1)).await;

    // The right password, from a file that only its owner can read.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("mqtt-password");
    std::fs::write(&pw, "right-one\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let right = MqttConfig {
        username: "babycry".into(),
        password_file: pw.display().to_string(),
        ..config(broker.port, "testnode")
    };
    right.validate().unwrap();
    let (handle, _task) = MqttHandle::spawn(&right, device());
    wait_until(
        "connected with the right password",
        Duration::from_secs(10),
        || handle.status().connected,
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// A rotated password reaches the broker with `systemctl reload`: SIGHUP after the
/// password file changed (the config file itself unchanged) connects again with the new
/// password. Before, the link read the file once at its start, the reload saw the same
/// `[mqtt]` and kept it, and once the broker took only the new password the daemon was
/// refused until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_after_the_password_file_changed_connects_with_the_new_password() {
    use std::os::unix::fs::PermissionsExt;
    let (broker, passwd) = passwd_broker("babycry", "first-password");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("mqtt-password");
    std::fs::write(&pw, "first-password\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let credentials = format!(
        "username = \"babycry\"\npassword_file = {:?}",
        pw.display().to_string()
    );
    let conf = daemon_config_full(
        dir.path(),
        broker.port,
        "pwrot",
        dir.path(),
        &credentials,
        "",
    );
    let daemon = StdinDaemon::start(&conf);
    let connected = || daemon.log().matches("mqtt connected").count();
    wait_until("connected", Duration::from_secs(20), || connected() == 1).await;

    // The password changes on both sides: the broker takes only the new one from now.
    std::fs::write(&pw, "second-password\n").unwrap();
    set_password(&passwd, "babycry", "second-password", false);
    broker.signal("HUP");
    daemon.signal("HUP");
    wait_until(
        "connected again with the new password",
        Duration::from_secs(20),
        || connected() >= 2,
    )
    .await;
    let log = daemon.log();
    let reload = log
        .find("credentials changed")
        .expect("the reload restarts the link");
    assert!(log[reload..].contains("mqtt connected"), "{log}");
    assert!(!log.contains("second-password") && !log.contains("first-password"));
    daemon.finish();
}

#[tokio::test]
async fn the_spool_keeps_events_across_a_daemon_restart() {
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = MqttConfig {
        spool: true,
        ..config(port, "testnode")
    }
    .with_state_dir(state.path().to_owned());
    let spool = state.path().join(babycry::mqtt::SPOOL_FILE);
    let sent: Vec<Event> = vec![window_event(3, 0), window_event(3, 1), episode_end(3)];
    {
        let (handle, task) = MqttHandle::spawn(&cfg, device());
        for e in &sent {
            handle.send(Update::Event(e.clone()));
        }
        handle.shutdown(Duration::from_secs(1)).await;
        task.await.unwrap();
    }
    let lines = std::fs::read_to_string(&spool).unwrap();
    assert_eq!(
        lines.lines().count(),
        4,
        "3 events and the episode event: {lines}"
    );

    let broker = Broker::start_on(port);
    let live = Subscriber::start(
        broker.port,
        &["babycry/testnode/event", "babycry/testnode/episode"],
    )
    .await;
    let (handle, _task) = MqttHandle::spawn(&cfg, device());
    wait_until("the spooled events arrive", Duration::from_secs(10), || {
        live.all().len() >= 4
    })
    .await;
    let got: Vec<String> = live
        .on("babycry/testnode/event")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    let expected: Vec<String> = sent.iter().map(Event::to_json).collect();
    assert_eq!(got, expected);
    assert_eq!(live.on("babycry/testnode/episode").len(), 1);
    wait_until(
        "the spool is removed once delivered",
        Duration::from_secs(5),
        || !spool.exists(),
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA certificate `<name>.crt` with its key `<name>.key`, made in `d`.
fn self_signed_ca(d: &Path, name: &str, common_name: &str) {
    let (key, crt, subject) = (
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("/CN={common_name}"),
    );
    openssl(
        d,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt,
            "-days", "1", "-subj", &subject,
        ],
    );
}

/// A CA (`ca.crt`, `ca.key`) and a server certificate it signed for 127.0.0.1
/// (`server.crt`, `server.key`), made in `d` with openssl.
fn ca_and_server_certificates(d: &Path) {
    self_signed_ca(d, "ca", "babycry test CA");
    signed_certificate(
        d,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// A client certificate `<name>.crt` / `<name>.key` signed by the CA in `d`.
fn client_certificate(d: &Path, name: &str) {
    // Extensions make it an X.509 v3 certificate: rustls refuses v1 ones.
    let extensions = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";
    signed_certificate(d, name, &format!("/CN={name}"), extensions);
}

/// `<name>.key` and `<name>.crt` for `subject` with `extensions`, signed by the CA in `d`.
fn signed_certificate(d: &Path, name: &str, subject: &str, extensions: &str) {
    let file = |ext: &str| format!("{name}.{ext}");
    std::fs::write(d.join(file("ext")), extensions).unwrap();
    signed_certificate_with(d, name, subject, &["-extfile", &file("ext")]);
}

/// `<name>.key` and `<name>.crt` for `subject`, signed by the CA in `d` by `openssl x509
/// -req` with `more` arguments.
fn signed_certificate_with(d: &Path, name: &str, subject: &str, more: &[&str]) {
    let file = |ext: &str| format!("{name}.{ext}");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &file("key"),
            "-out",
            &file("csr"),
            "-subj",
            subject,
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &file("csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &file("crt"),
            "-days",
            "1",
        ]
        .iter()
        .chain(more)
        .copied()
        .collect::<Vec<_>>(),
    );
}

/// Mosquitto with a plain listener (for the tests' subscribers) and a TLS one on the
/// certificates in `d`, `extra` appended to the TLS listener's settings; and the TLS port.
fn tls_broker(d: &Path, extra: &str) -> (Broker, u16) {
    let plain = free_port();
    let tls = free_port();
    let conf = format!(
        "user root\nlistener {plain} 127.0.0.1\nallow_anonymous true\nlistener {tls} 127.0.0.1\ncafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n{extra}",
        d.display()
    );
    (Broker::start_on_conf(plain, &conf), tls)
}

/// A retained message over the 256 KiB packet limit on Home Assistant's status comes back
/// at every subscribe: after it cost two connections in a row the daemon stops
/// subscribing, and the third connection stays up and delivers, instead of one reconnect
/// per backoff for as long as the message stays.
#[tokio::test]
async fn a_retained_message_over_the_size_limit_costs_two_connections_not_all_of_them() {
    let broker = Broker::start();
    let (ha, poller) = fake_home_assistant(broker.port);
    publish_over_the_size_limit(&ha, true).await;
    // Time for the broker to take it (the poller acknowledges it).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cfg = config(broker.port, "bignode");
    let (handle, _task) = MqttHandle::spawn(&cfg, device());
    // Backoffs of 1..2 s and 2..4 s after the two losses.
    wait_until("the third connection", Duration::from_secs(15), || {
        let st = handle.status();
        st.connected && st.connections == 3
    })
    .await;
    let live = Subscriber::start(broker.port, &["babycry/bignode/event"]).await;
    let e = window_event(1, 0);
    handle.send(Update::Event(e.clone()));
    live.wait_for(
        "babycry/bignode/event",
        &e.to_json(),
        Duration::from_secs(5),
    )
    .await;
    // Longer than the next backoff (4..8 s) would have been.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let st = handle.status();
    assert!(
        st.connected && st.connections == 3 && st.failures == 2,
        "{st:?}"
    );
    poller.abort();
    handle.shutdown(Duration::from_secs(5)).await;
}

/// `cfg` (valid) comes online, publishes one event and shuts down; `live` sees both.
async fn one_event_over(cfg: &MqttConfig, live: &Subscriber) {
    cfg.validate().unwrap();
    let base = format!("babycry/{}", cfg.node_id);
    let (handle, _task) = MqttHandle::spawn(cfg, device());
    live.wait_for(&format!("{base}/status"), "online", Duration::from_secs(10))
        .await;
    let e = window_event(4, 0);
    handle.send(Update::Event(e.clone()));
    live.wait_for(
        &format!("{base}/event"),
        &e.to_json(),
        Duration::from_secs(5),
    )
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// `cfg` fails to connect (and stays disconnected); its last error.
async fn refused(cfg: &MqttConfig) -> String {
    let (handle, _task) = MqttHandle::spawn(cfg, device());
    wait_until("a refused connection", Duration::from_secs(10), || {
        handle.status().failures >= 1
    })
    .await;
    assert!(!handle.status().connected);
    handle.status().last_error.unwrap_or_default()
}

#[tokio::test]
async fn tls_with_a_client_certificate_the_broker_requires() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    ca_and_server_certificates(d);
    client_certificate(d, "babycryd");
    let (broker, tls) = tls_broker(d, "require_certificate true\n");
    let live = Subscriber::start(broker.port, &["babycry/certnode/#"]).await;
    let with_cert = MqttConfig {
        tls: true,
        ca_file: d.join("ca.crt").display().to_string(),
        client_cert: d.join("babycryd.crt").display().to_string(),
        client_key: d.join("babycryd.key").display().to_string(),
        ..config(tls, "certnode")
    };
    one_event_over(&with_cert, &live).await;

    // Without the certificate the broker refuses the handshake.
    let without = MqttConfig {
        client_cert: String::new(),
        client_key: String::new(),
        node_id: "nocert".into(),
        ..with_cert
    };
    refused(&without).await;
    assert!(live.on("babycry/nocert/status").is_empty());
}

#[tokio::test]
async fn tls_with_a_ca_made_at_test_time() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    ca_and_server_certificates(d);

    let (broker, tls) = tls_broker(d, "");
    let live = Subscriber::start(broker.port, &["babycry/testnode/#"]).await;
    let cfg = MqttConfig {
        tls: true,
        ca_file: d.join("ca.crt").display().to_string(),
        ..config(tls, "testnode")
    };
    one_event_over(&cfg, &live).await;

    // A client that trusts another CA refuses the broker.
    self_signed_ca(d, "other", "other CA");
    let wrong = MqttConfig {
        ca_file: d.join("other.crt").display().to_string(),
        node_id: "wrongca".into(),
        ..cfg
    };
    let err = refused(&wrong).await;
    assert!(err.contains("TLS"), "{err}");
}

/// Certificates made as `man mosquitto-tls` says, without extensions, are X.509 v1, which
/// Mosquitto takes and rustls does not: the broker's and the client's refusals say so and
/// what to do. Before, "invalid peer certificate: UnsupportedCertVersion", for the
/// client's own certificate too.
#[tokio::test]
async fn tls_certificates_rustls_refuses_are_explained() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    self_signed_ca(d, "ca", "babycry test CA");
    signed_certificate_with(d, "server", "/CN=127.0.0.1", &[]);
    let (_broker, tls) = tls_broker(d, "");
    let cfg = MqttConfig {
        tls: true,
        ca_file: d.join("ca.crt").display().to_string(),
        ..config(tls, "v1node")
    };
    let err = refused(&cfg).await;
    assert!(
        err.contains("the broker's certificate is an X.509 v1 certificate"),
        "{err}"
    );

    signed_certificate_with(d, "client", "/CN=client", &[]);
    let with_v1_client = MqttConfig {
        client_cert: d.join("client.crt").display().to_string(),
        client_key: d.join("client.key").display().to_string(),
        ..cfg
    };
    let err = with_v1_client.validate().unwrap_err();
    assert!(
        err.contains("refused") && err.contains("the client certificate is an X.509 v1"),
        "{err}"
    );
}

/// The real `babycryd mqtt-remove` with a config for `node` on the broker at `port`,
/// its state directory `dir`.
fn mqtt_remove(port: u16, node: &str, dir: &Path) -> std::process::Output {
    let conf = dir.join("config.toml");
    std::fs::write(
        &conf,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nnode_id = \"{node}\"\n[daemon]\nstate_dir = {dir:?}\n"
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_babycryd"))
        .arg("--config")
        .arg(&conf)
        .arg("mqtt-remove")
        .output()
        .unwrap()
}

/// What a successful `mqtt-remove` printed.
fn removed(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn mqtt_remove_makes_the_device_disappear() {
    let broker = Broker::start();
    let (handle, _task) = MqttHandle::spawn(&config(broker.port, "testnode"), device());
    handle.send(Update::Crying(true));
    wait_until("discovered", Duration::from_secs(10), || {
        handle.status().discoveries == 1
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let before = Subscriber::start(broker.port, &["homeassistant/#", "babycry/testnode/#"]).await;
    wait_until("retained configs", Duration::from_secs(5), || {
        before.all().len() >= 12
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let remove = || mqtt_remove(broker.port, "testnode", dir.path());
    let out = remove();
    let stdout = removed(&out);
    assert!(
        stdout.contains("removed 10 Home Assistant entities of node testnode"),
        "{stdout}"
    );

    let after = Subscriber::start(broker.port, &["homeassistant/#", "babycry/testnode/#"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        after.all().is_empty(),
        "nothing retained is left: {:?}",
        after.all()
    );
    let removals: Vec<Seen> = before
        .all()
        .into_iter()
        .filter(|m| m.topic.ends_with("/config") && m.payload.is_empty())
        .collect();
    assert_eq!(removals.len(), 10);

    // A removal that gets no answer gives up on its error path, without DISCONNECT: the
    // broker, stopped, accepts the connection and reads nothing until it resumes, then
    // reads the CONNECT and the closed connection at once. A removal client with the
    // daemon's last will would leave a retained `offline` on the status it just cleared.
    broker.signal("STOP");
    let out = remove();
    broker.signal("CONT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    wait_until(
        "the broker saw the removal client go",
        Duration::from_secs(5),
        || {
            broker
                .log()
                .contains("Client babycryd-testnode-remove closed its connection")
        },
    )
    .await;
    let last = Subscriber::start(broker.port, &["babycry/testnode/#"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        last.all().is_empty(),
        "no last will after a failed removal: {:?}",
        last.all()
    );
}

/// `mqtt-remove` after the node id changed (a renamed host that the default node id
/// follows) and no daemon ran since: the device recorded in the state directory goes too,
/// and its record. Before, its configs and states stayed retained: an unavailable device
/// left in Home Assistant after the documented uninstall.
#[tokio::test]
async fn mqtt_remove_also_removes_the_device_recorded_before() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("mqtt-device.json");
    let old = config(broker.port, "oldnode").with_state_dir(dir.path().to_owned());
    let (handle, _task) = MqttHandle::spawn(&old, device());
    handle.send(Update::Crying(true));
    wait_until("recorded", Duration::from_secs(10), || {
        handle.status().discoveries == 1 && record.exists()
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
    let filters = ["homeassistant/#", "babycry/#"];
    let held = retained(broker.port, &filters).await;
    assert!(held.keys().any(|t| t.contains("oldnode")), "{held:#?}");

    let stdout = removed(&mqtt_remove(broker.port, "newnode", dir.path()));
    assert!(
        stdout.contains(
            "removed the device announced before (node oldnode, base topic babycry/oldnode) too"
        ),
        "{stdout}"
    );
    let held = retained(broker.port, &filters).await;
    assert!(held.is_empty(), "nothing retained is left: {held:#?}");
    assert!(!record.exists());
}

/// What a broker holds retained under `filters`, by topic (an empty payload is no
/// message: the broker keeps nothing for it).
async fn retained(port: u16, filters: &[&str]) -> BTreeMap<String, String> {
    let snapshot = Subscriber::start(port, filters).await;
    snapshot.wait_subscribed(filters.len() as u64).await;
    // The broker sends them right after each SUBACK: done once nothing new came for
    // 500 ms (a loaded machine may take longer than that to deliver the first ones).
    let mut seen = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = snapshot.all().len();
        if now == seen && now > 0 {
            break;
        }
        seen = now;
    }
    snapshot
        .all()
        .into_iter()
        .filter(|m| m.retain)
        .map(|m| (m.topic, m.payload))
        .collect()
}

/// A daemon started with another node id (edited, or a renamed host that the default
/// follows) clears what the device it announced before left retained: Home Assistant
/// shows one device, not the old one unavailable for ever beside the new one. A restart
/// with the same settings clears nothing.
#[tokio::test]
async fn a_changed_node_id_clears_the_device_announced_before() {
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    let record = state.path().join("mqtt-device.json");
    let cfg = |node: &str| config(broker.port, node).with_state_dir(state.path().into());
    let filters = ["homeassistant/#", "babycry/#"];
    let run = |node: &'static str| {
        let (cfg, record) = (cfg(node), record.clone());
        async move {
            let (handle, _task) = MqttHandle::spawn(&cfg, device());
            handle.send(Update::Crying(true));
            handle.send(Update::Diagnostics(diagnostics()));
            wait_until("discovered", Duration::from_secs(10), || {
                handle.status().discoveries == 1
            })
            .await;
            wait_until("the device recorded", Duration::from_secs(10), || {
                std::fs::read_to_string(&record).is_ok_and(|r| r.contains(node))
            })
            .await;
            handle.shutdown(Duration::from_secs(5)).await;
        }
    };
    let under = |held: &BTreeMap<String, String>, node: &str| {
        held.keys()
            .filter(|t| t.contains(&format!("/{node}")))
            .count()
    };

    run("nursery").await;
    let first = retained(broker.port, &filters).await;
    // 10 configs, status (offline now), crying, diagnostics.
    assert_eq!(under(&first, "nursery"), 13, "{first:#?}");

    let live = Subscriber::start(broker.port, &filters).await;
    live.wait_subscribed(filters.len() as u64).await;
    run("nursery").await;
    let cleared = |node: &str| {
        live.all()
            .iter()
            .filter(|m| m.payload.is_empty() && m.topic.contains(&format!("/{node}")))
            .count()
    };
    assert_eq!(cleared("nursery"), 0, "the same device is not cleared");

    run("cot").await;
    let after = retained(broker.port, &filters).await;
    assert_eq!(under(&after, "nursery"), 0, "{after:#?}");
    assert_eq!(under(&after, "cot"), 13, "{after:#?}");
    // Every retained topic of the old device, once: 10 configs and 5 states.
    assert_eq!(cleared("nursery"), 15);
    assert_eq!(cleared("cot"), 0);
}

#[tokio::test]
async fn events_spooled_by_a_killed_process_are_delivered_by_the_next_one() {
    let state = tempfile::tempdir().unwrap();
    let spool = state.path().join(babycry::mqtt::SPOOL_FILE);
    let port = free_port();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_holding_a_connection", "--ignored"])
        .env("BABYCRY_MQTT_CHILD_PORT", port.to_string())
        .env("BABYCRY_MQTT_CHILD_STATE", state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("both events spooled", Duration::from_secs(20), || {
        std::fs::read_to_string(&spool).is_ok_and(|t| t.lines().count() == 2)
    })
    .await;
    child.kill().unwrap(); // SIGKILL, broker never seen
    child.wait().unwrap();
    let spooled: Vec<String> = std::fs::read_to_string(&spool)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["payload"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    let broker = Broker::start_on(port);
    let live = Subscriber::start(broker.port, &["babycry/killme/event"]).await;
    let cfg = MqttConfig {
        spool: true,
        ..config(port, "killme")
    }
    .with_state_dir(state.path().to_owned());
    let (handle, _task) = MqttHandle::spawn(&cfg, device());
    wait_until("the spooled events arrive", Duration::from_secs(10), || {
        live.all().len() >= 2
    })
    .await;
    let got: Vec<String> = live.all().into_iter().map(|m| m.payload).collect();
    assert_eq!(got, spooled);
    let first: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(
        (first["episode"].as_u64(), first["index"].as_u64()),
        (Some(5), Some(0))
    );
    handle.shutdown(Duration::from_secs(5)).await;
}

/// The real `babycryd run` on a replayed recording: every window and episode-end record it
/// prints also arrives on `<base>/event`, in order, once, and nothing else does (episode
/// starts are `crying`, audio states diagnostics); `crying` goes ON then OFF; and the
/// clean exit leaves `offline`.
#[tokio::test]
async fn the_daemon_publishes_every_event_of_a_replayed_recording() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["babycry/e2e/#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config(dir.path(), broker.port, "e2e");
    let wav = dir.path().join("night.wav");
    babycry::decode::write_wav_i16(&wav, &babycry::synth::demo_night(8000), 8000).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_babycryd"))
        .arg("--config")
        .arg(&conf)
        .args(["run", "--fast", "--input"])
        .arg(&wav)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        printed.iter().any(|v| v["type"] == "episode_end"),
        "the demo night has a cry episode"
    );
    let want: Vec<String> = printed
        .iter()
        .filter(|v| v["type"] == "window" || v["type"] == "episode_end")
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        printed.iter().any(|v| v["type"] == "window"),
        "the demo night has classified windows"
    );
    wait_until("every event arrived", Duration::from_secs(10), || {
        sub.on("babycry/e2e/event").len() >= want.len()
    })
    .await;
    // Anything else would arrive with (or right after) the last one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<String> = sub
        .on("babycry/e2e/event")
        .iter()
        .map(|m| {
            assert!(!m.retain, "events are not retained");
            serde_json::from_str::<Value>(&m.payload).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got, want, "every event once, in order");
    let crying: Vec<String> = sub
        .on("babycry/e2e/crying")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert!(
        crying.iter().any(|c| c == "ON"),
        "crying never went ON: {crying:?}"
    );
    assert_eq!(crying.last().map(String::as_str), Some("OFF"), "{crying:?}");
    let status: Vec<String> = sub
        .on("babycry/e2e/status")
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        status.last().map(String::as_str),
        Some("offline"),
        "{status:?}"
    );
}

/// SIGKILL on the real daemon: the broker publishes the last will, `offline`.
#[tokio::test]
async fn a_daemon_killed_with_sigkill_leaves_offline() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["babycry/kill9/status"]).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config(dir.path(), broker.port, "kill9");
    let wav = dir.path().join("night.wav");
    babycry::decode::write_wav_i16(&wav, &babycry::synth::room_tone(8000, 60.0, 0.002, 1), 8000)
        .unwrap();
    // Replayed in real time: still running when killed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_babycryd"))
        .arg("--config")
        .arg(&conf)
        .args(["run", "--input"])
        .arg(&wav)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    sub.wait_for("babycry/kill9/status", "online", Duration::from_secs(20))
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    sub.wait_for("babycry/kill9/status", "offline", Duration::from_secs(10))
        .await;
}

/// A broker, a subscriber to `filter`, and `babycryd run --input -` for node `node` (its
/// config in a temporary directory), once the daemon has said `online`.
struct DaemonOnline {
    broker: Broker,
    sub: Subscriber,
    dir: tempfile::TempDir,
    conf: std::path::PathBuf,
    daemon: StdinDaemon,
}

/// A stdin source that is never reported stalled in a test's lifetime: its pauses are the
/// test's, and a stall would end the open episode.
const NO_STALL: &str = "[audio]\nstall_seconds = 600.0\n";

/// [`DaemonOnline`] with the default test config.
async fn daemon_online(node: &str, filter: &str) -> DaemonOnline {
    daemon_online_with(node, filter, "").await
}

/// [`daemon_online`] with `extra` TOML in the config (see [`daemon_config_with`]).
async fn daemon_online_with(node: &str, filter: &str, extra: &str) -> DaemonOnline {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &[filter]).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = daemon_config_with(dir.path(), broker.port, node, extra);
    let daemon = StdinDaemon::start(&conf);
    sub.wait_for(
        &format!("babycry/{node}/status"),
        "online",
        Duration::from_secs(20),
    )
    .await;
    DaemonOnline {
        broker,
        sub,
        dir,
        conf,
        daemon,
    }
}

/// The real daemon, the broker killed mid-episode (right after the first window) and
/// restarted: every window and the episode end arrive exactly once, in order, and
/// `crying` ends OFF on the new broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_delivers_every_event_across_a_broker_restart_mid_episode() {
    let DaemonOnline {
        mut broker,
        sub,
        dir: _dir,
        conf: _,
        mut daemon,
    } = daemon_online("bounce", "babycry/bounce/#").await;
    daemon.feed(&tone_then_cry(21));
    // Killed as soon as the first window is printed, which is when it is handed to the
    // MQTT link: without waiting for its delivery or PUBACK.
    wait_until("the first window", Duration::from_secs(30), || {
        !daemon.event_ids().is_empty()
    })
    .await;
    broker.kill();
    daemon.feed(&cry_then_quiet(22));
    wait_until("the episode end", Duration::from_secs(30), || {
        daemon.printed("episode_end") == 1
    })
    .await;
    // The daemon is held (SIGSTOP) while the broker comes back and the subscriber
    // subscribes again: its next attempt could otherwise come right after the restart,
    // before anyone listens, and the events it then delivered would be missed here.
    daemon.signal("STOP");
    broker.restart();
    sub.wait_subscribed(2).await;
    daemon.signal("CONT");
    let want = daemon.event_ids();
    assert!(
        want.len() >= 3,
        "windows before and after the restart: {want:?}"
    );
    // The daemon's next attempt may be up to a whole backoff step away: steps double
    // while the broker is down (how long depends on how fast this machine analysed the
    // episode), and the longest is 60 s.
    let arrived = tokio::time::timeout(Duration::from_secs(75), async {
        while sub.on("babycry/bounce/event").len() < want.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "not every event arrived within 75 s; the daemon's log:\n{}",
        daemon.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ids_of(&sub.on("babycry/bounce/event")),
        want,
        "exactly once, in order"
    );
    // The new broker knew nothing: the daemon republished the current state, and its
    // discovery (all 10 configs, retained) after the reconnect.
    let late = Subscriber::start(
        broker.port,
        &["babycry/bounce/crying", "homeassistant/+/+/config"],
    )
    .await;
    late.wait_for("babycry/bounce/crying", "OFF", Duration::from_secs(5))
        .await;
    let configs = || -> HashSet<String> {
        late.all()
            .into_iter()
            .filter(|m| m.retain && m.topic.starts_with("homeassistant/"))
            .filter(|m| m.topic.contains("bounce"))
            .map(|m| m.topic)
            .collect()
    };
    wait_until(
        "rediscovered after the restart",
        Duration::from_secs(5),
        || configs().len() >= 10,
    )
    .await;
    assert_eq!(configs().len(), 10, "{:?}", configs());
    daemon.finish();
}

/// Events the daemon published but the broker never acknowledged (the broker stopped
/// with SIGSTOP, the connection still up) are in the spool when the daemon is killed
/// with SIGKILL, and the next start delivers every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_awaiting_their_puback_survive_a_sigkill_of_the_daemon() {
    let DaemonOnline {
        broker,
        sub,
        dir,
        conf,
        mut daemon,
    } = daemon_online("wal", "babycry/wal/#").await;
    broker.signal("STOP");
    let want = feed_an_episode(&mut daemon, 31).await;
    let spool = dir.path().join(babycry::mqtt::SPOOL_FILE);
    // The ids of the events in the spool, in order (none while it does not exist).
    let spooled = || -> Vec<String> {
        std::fs::read_to_string(&spool)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|q| q["topic"] == "event")
            .map(|q| {
                serde_json::from_str::<Value>(q["payload"].as_str().unwrap()).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // Each event is written ahead, as the link task takes it (a channel hop after it is
    // printed), long before the broker (stopped) could acknowledge it.
    wait_until(
        "every printed event in the spool",
        Duration::from_secs(10),
        || spooled() == want,
    )
    .await;
    daemon.child.kill().unwrap(); // SIGKILL, PUBACKs outstanding
    daemon.child.wait().unwrap();
    assert_eq!(spooled(), want, "every unacknowledged event is on disk");

    broker.signal("CONT");
    let next = StdinDaemon::start(&conf);
    wait_until("every event arrived", Duration::from_secs(30), || {
        let got: HashSet<String> = ids_of(&sub.on("babycry/wal/event")).into_iter().collect();
        want.iter().all(|id| got.contains(id))
    })
    .await;
    // At least once, first arrivals in order. A copy the killed process had already
    // written into the broker's socket may arrive too (QoS 1: consumers dedupe by id).
    let mut first_seen = Vec::new();
    for id in ids_of(&sub.on("babycry/wal/event")) {
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, want);
    wait_until("the spool emptied", Duration::from_secs(10), || {
        !spool.exists()
    })
    .await;
    next.finish();
}

/// An event the broker acknowledged is out of the spool at once (within 900 ms of its
/// delivery here): a daemon killed then does not send it again when it starts next.
/// Before, the spool recorded deliveries at its next one-second tick, and a start after a
/// kill in that second resent the whole episode (Home Assistant fired the episode event
/// twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_delivered_just_before_a_sigkill_of_the_daemon_are_not_sent_again() {
    let DaemonOnline {
        broker: _broker,
        sub,
        dir,
        conf,
        mut daemon,
    } = daemon_online("dlv", "babycry/dlv/#").await;
    let want = feed_an_episode(&mut daemon, 41).await;
    // The episode's Home Assistant event goes last, behind the episode end's record.
    wait_until("every event delivered", Duration::from_secs(10), || {
        ids_of(&sub.on("babycry/dlv/event")) == want && !sub.on("babycry/dlv/episode").is_empty()
    })
    .await;
    // The spool goes with the last acknowledgement (before, at the next one-second tick,
    // so mostly later): 900 ms leaves a loaded machine time for the removal's fsync, and
    // still sees the old tick one time in ten; the resend check below is what matters.
    let spool = dir.path().join(babycry::mqtt::SPOOL_FILE);
    wait_until(
        "the spool removed with the last delivery",
        Duration::from_millis(900),
        || !spool.exists(),
    )
    .await;
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    let next = StdinDaemon::start(&conf);
    wait_until("the next start online", Duration::from_secs(20), || {
        let status = sub.on("babycry/dlv/status");
        status.iter().filter(|m| m.payload == "online").count() == 2
    })
    .await;
    // A resend follows `online` and discovery at once: a second is plenty to see one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids_of(&sub.on("babycry/dlv/event")), want);
    next.finish();
}

/// SIGHUP with new MQTT settings (another node id) moves the running daemon to the new
/// topics: the old base says `offline`, the new one `online`, the next episode's events
/// go to the new base, and no audio was dropped across the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_the_daemon_to_new_mqtt_settings_without_dropping_audio() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &["babycry/#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let quick = "[episode]\nquiet_seconds = 2.0\ncooldown_seconds = 0.0\n";
    let conf = daemon_config_with(dir.path(), broker.port, "hupold", quick);
    let mut daemon = StdinDaemon::start(&conf);
    sub.wait_for("babycry/hupold/status", "online", Duration::from_secs(20))
        .await;
    // Two cries with quiet after each (longer than quiet_seconds): two episodes.
    let with_quiet = |seed| {
        let mut audio = tone_then_cry(seed);
        audio.extend(babycry::synth::room_tone(8000, 5.0, 0.002, seed));
        audio
    };
    let first = with_quiet(41);
    daemon.feed(&first);
    daemon_config_with(dir.path(), broker.port, "hupnew", quick);
    let status = Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    sub.wait_for("babycry/hupnew/status", "online", Duration::from_secs(20))
        .await;
    sub.wait_for("babycry/hupold/status", "offline", Duration::from_secs(5))
        .await;
    let second = with_quiet(42);
    daemon.feed(&second);
    wait_until("the second episode's end", Duration::from_secs(30), || {
        daemon.printed("episode_end") == 2
    })
    .await;
    let printed = daemon.printed.clone();
    daemon.finish();
    let printed = printed.lock().unwrap().clone();
    let summary = printed.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let fed = (first.len() + second.len()) as f64 / 8000.0;
    let heard = summary["audio_seconds"].as_f64().unwrap();
    assert!((heard - fed).abs() < 0.05, "fed {fed} s, heard {heard} s");
    // The second episode ended after the reload: its end is on the new base only.
    let last_end = printed
        .iter()
        .rev()
        .find(|v| v["type"] == "episode_end")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the last episode end on the new base",
        Duration::from_secs(10),
        || ids_of(&sub.on("babycry/hupnew/event")).contains(&last_end),
    )
    .await;
    assert!(!ids_of(&sub.on("babycry/hupold/event")).contains(&last_end));
    // The device of the old settings is cleared from Home Assistant.
    let held = retained(broker.port, &["homeassistant/#", "babycry/#"]).await;
    assert!(!held.keys().any(|t| t.contains("hupold")), "{held:#?}");
    assert!(held.contains_key("homeassistant/binary_sensor/hupnew_crying/config"));
}

/// SIGHUP that shortens `[daemon] diagnostics_seconds` (3600 to 1) applies from the
/// reload: diagnostics come every second of audio after it. Before, the next one waited
/// for the old interval's tick, 3600 s of audio after the start. And the diagnostics
/// sent before the room was heard say null for the noise floor and the inference time,
/// not a placeholder (-120 dBFS, 0 ms) Home Assistant would record as a measurement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_shorter_diagnostics_interval_applies_at_once() {
    let broker = Broker::start();
    let topic = "babycry/diag/diagnostics";
    let sub = Subscriber::start(broker.port, &["babycry/diag/#"]).await;
    let dir = tempfile::tempdir().unwrap();
    let configure = |seconds: u32| {
        let conf = daemon_config(dir.path(), broker.port, "diag");
        let text = std::fs::read_to_string(&conf).unwrap().replacen(
            "[daemon]\n",
            &format!("[daemon]\ndiagnostics_seconds = {seconds}\n"),
            1,
        );
        std::fs::write(&conf, text).unwrap();
        conf
    };
    let mut daemon = StdinDaemon::start(&configure(3600));
    sub.wait_for("babycry/diag/status", "online", Duration::from_secs(20))
        .await;
    wait_until("the first diagnostics", Duration::from_secs(10), || {
        !sub.on(topic).is_empty()
    })
    .await;
    let first: Value = serde_json::from_str(&sub.on(topic)[0].payload).unwrap();
    assert!(first["noise_floor_dbfs"].is_null(), "{first}");
    assert!(first["last_inference_ms"].is_null(), "{first}");
    daemon.feed(&babycry::synth::room_tone(8000, 3.0, 0.002, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sub.on(topic).len();
    configure(1);
    daemon.signal("HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        daemon.log().contains("configuration reloaded")
    })
    .await;
    daemon.feed(&babycry::synth::room_tone(8000, 5.0, 0.002, 2));
    wait_until(
        "diagnostics every second after the reload",
        Duration::from_secs(10),
        || sub.on(topic).len() >= before + 4,
    )
    .await;
    let last: Value = serde_json::from_str(&sub.on(topic).last().unwrap().payload).unwrap();
    let floor = last["noise_floor_dbfs"].as_f64().expect("the room heard");
    assert!((-70.0..-45.0).contains(&floor), "{last}");
    daemon.finish();
}

/// SIGHUP with new MQTT settings in the middle of a cry: the new link starts from the
/// states of the old one, so the new base says `crying` ON (retained, for a Home Assistant
/// that comes later too) and the reason so far, not OFF until the next episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_during_a_cry_keeps_crying_on_at_the_new_settings() {
    let DaemonOnline {
        broker,
        sub,
        dir,
        conf: _,
        mut daemon,
    } = daemon_online_with("cryold", "babycry/#", NO_STALL).await;
    // Ends mid-cry: the episode stays open while no more audio comes (and the source is
    // not stalled, which would end it, however slowly the reload goes here).
    daemon.feed(&tone_then_cry(43));
    sub.wait_for("babycry/cryold/crying", "ON", Duration::from_secs(30))
        .await;
    wait_until("a reason", Duration::from_secs(30), || {
        !sub.on("babycry/cryold/reason").is_empty()
    })
    .await;
    let reason = sub
        .on("babycry/cryold/reason")
        .last()
        .unwrap()
        .payload
        .clone();
    daemon_config_with(dir.path(), broker.port, "crynew", NO_STALL);
    daemon.signal("HUP");
    sub.wait_for("babycry/crynew/status", "online", Duration::from_secs(20))
        .await;
    wait_until("the new base's states", Duration::from_secs(5), || {
        !sub.on("babycry/crynew/crying").is_empty() && !sub.on("babycry/crynew/reason").is_empty()
    })
    .await;
    let payloads =
        |topic: &str| -> Vec<String> { sub.on(topic).into_iter().map(|m| m.payload).collect() };
    assert_eq!(payloads("babycry/crynew/crying"), ["ON"]);
    // The reason so far first; a reason window the daemon was still classifying may
    // follow (with the shipped abstaining model, the same `uncertain`).
    let reasons = payloads("babycry/crynew/reason");
    assert!(
        reasons.iter().all(|r| *r == reason),
        "{reasons:?} vs {reason}"
    );
    let late = Subscriber::start(
        broker.port,
        &["babycry/crynew/crying", "babycry/crynew/reason"],
    )
    .await;
    let retained = late
        .wait_for("babycry/crynew/crying", "ON", Duration::from_secs(5))
        .await;
    assert!(retained.retain);
    late.wait_for("babycry/crynew/reason", &reason, Duration::from_secs(5))
        .await;
    assert_eq!(daemon.printed("episode_end"), 0, "still crying");
    daemon.finish();
    sub.wait_for("babycry/crynew/crying", "OFF", Duration::from_secs(10))
        .await;
}

/// One MQTT packet read from a client: its first byte and its body.
async fn read_packet(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let first = s.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

/// The payloads of `babycry/<node>/event` publishes, by connection (0-based), as a scripted
/// MQTT 3.1.1 peer saw them. The peer acknowledges everything; on the first connection it
/// answers the first event with its PUBACK and closes in the same TCP segment (TCP_CORK
/// holds the PUBACK until the FIN is tacked on), as a broker killed right after
/// acknowledging does at its worst: the client reads the PUBACK and the end of the
/// connection at once.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn acknowledge_then_close(
    listener: tokio::net::TcpListener,
    node: &str,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(usize, String)>>>,
) {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;
    let event_topic = format!("babycry/{node}/event");
    for conn in 0.. {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        while let Some((first, body)) = read_packet(&mut s).await {
            match first >> 4 {
                1 => s.write_all(&[0x20, 2, 0, 0]).await.unwrap(), // CONNECT -> CONNACK
                8 => s.write_all(&[0x90, 3, body[0], body[1], 1]).await.unwrap(), // SUBACK
                3 => {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                    let qos = (first >> 1) & 3;
                    let payload_at = 2 + topic_len + if qos > 0 { 2 } else { 0 };
                    let is_event = topic == event_topic;
                    if is_event {
                        let payload = String::from_utf8_lossy(&body[payload_at..]).into_owned();
                        seen.lock().unwrap().push((conn, payload));
                    }
                    if qos == 0 {
                        continue;
                    }
                    let pid = [body[2 + topic_len], body[3 + topic_len]];
                    let close = is_event && conn == 0;
                    if close {
                        let on: libc::c_int = 1;
                        // SAFETY: a valid socket and a c_int option of the right size.
                        let rc = unsafe {
                            libc::setsockopt(
                                s.as_raw_fd(),
                                libc::IPPROTO_TCP,
                                libc::TCP_CORK,
                                (&raw const on).cast(),
                                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                            )
                        };
                        assert_eq!(rc, 0, "TCP_CORK");
                    }
                    s.write_all(&[0x40, 2, pid[0], pid[1]]).await.unwrap();
                    if close {
                        s.shutdown().await.unwrap();
                        break;
                    }
                }
                12 => s.write_all(&[0xd0, 0]).await.unwrap(), // PINGREQ -> PINGRESP
                _ => {}
            }
        }
    }
}

/// rumqttc can read a PUBACK and the end of the connection in one go; the event it
/// acknowledges was delivered and must not be sent again on the next connection.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn a_puback_read_together_with_the_connection_end_is_not_resent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let peer = tokio::spawn(acknowledge_then_close(listener, "corked", seen.clone()));
    let (handle, _task) = MqttHandle::spawn(&config(port, "corked"), device());
    wait_until("connected", Duration::from_secs(10), || {
        handle.status().connected
    })
    .await;
    let (first, second) = (window_event(1, 0), window_event(1, 1));
    handle.send(Update::Event(first.clone()));
    wait_until(
        "the first connection ended",
        Duration::from_secs(10),
        || handle.status().failures >= 1,
    )
    .await;
    wait_until("reconnected", Duration::from_secs(70), || {
        handle.status().connections >= 2
    })
    .await;
    handle.send(Update::Event(second.clone()));
    wait_until("the second event arrived", Duration::from_secs(10), || {
        seen.lock().unwrap().iter().any(|(c, _)| *c == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = [first.to_json(), second.to_json()];
    // (connection, which event) for each event publish the peer saw.
    let got: Vec<(usize, Option<usize>)> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(c, p)| (*c, sent.iter().position(|s| s == p)))
        .collect();
    assert_eq!(
        got,
        vec![(0, Some(0)), (1, Some(1))],
        "each event once: the first on the connection that acknowledged it"
    );
    assert_eq!(handle.status().queued, 0, "{:?}", handle.status());
    peer.abort();
}

/// A broker that accepts every connection and drops it right after its CONNACK, as two
/// monitors with the same client id do to each other: the link retries with growing,
/// jittered delays (1..2 s, 2..4 s, 4..8 s), not every second forever, since a connection
/// that did not stay up does not reset the backoff.
#[tokio::test]
async fn a_connection_dropped_right_after_its_connack_is_retried_with_growing_delays() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connects = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = connects.clone();
    let peer = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if let Some((first, _)) = read_packet(&mut s).await {
                if first >> 4 == 1 {
                    seen.lock().unwrap().push(Instant::now());
                    let _ = s.write_all(&[0x20, 2, 0, 0]).await;
                }
            }
            let _ = s.shutdown().await;
        }
    });
    let (handle, _task) = MqttHandle::spawn(&config(port, "flap"), device());
    wait_until("four connections", Duration::from_secs(30), || {
        connects.lock().unwrap().len() >= 4
    })
    .await;
    let at = connects.lock().unwrap().clone();
    let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!("gaps between connections: {gaps:.3?}");
    // Each delay plus a moment to connect (up to 2 s on a loaded machine): the lower
    // bounds show the growth, the upper ones a delay that does not run away.
    for (gap, (lo, hi)) in gaps.iter().zip([(1.0, 4.0), (2.0, 6.0), (4.0, 10.0)]) {
        assert!(
            (lo..hi).contains(gap),
            "{gap:.3} s not within {lo}..{hi}: {gaps:.3?}"
        );
    }
    let st = handle.status();
    assert!(st.connections >= 3 && st.failures >= 3, "{st:?}");
    peer.abort();
}

/// A reload in the middle of a cry starts the new link from the states the daemon kept
/// (`States`, noted from every update it sent), not from what the link it replaces hands
/// back: a task that ran with `enabled = false`, and one that is gone (a hand-over that
/// does not answer is empty), still leave `crying` ON, the reason and the confidence at
/// once on the new settings; events sent while MQTT was off stay off.
#[tokio::test]
async fn a_link_started_by_a_reload_says_the_states_kept_by_the_daemon() {
    let broker = Broker::start();
    let live = Subscriber::start(broker.port, &["babycry/wasoff/#", "babycry/wasgone/#"]).await;
    let off = MqttConfig {
        enabled: false,
        ..config(broker.port, "wasoff")
    };
    let (handle, _task) = MqttHandle::spawn(&off, device());
    let mut states = States::default();
    for update in [
        Update::Crying(true),
        Update::Reason {
            reason: "tired".into(),
            confidence: 0.625,
        },
        Update::Event(window_event(1, 0)),
    ] {
        states.note(&update);
        handle.send(update);
    }
    let handover = handle.hand_over(Duration::from_secs(1)).await;
    let (handle, task) = MqttHandle::resume(
        &config(broker.port, "wasoff"),
        device(),
        states.clone(),
        handover,
    );
    let said_the_states = |node: &'static str| {
        let live = &live;
        async move {
            let topic = |t: &str| format!("babycry/{node}/{t}");
            live.wait_for(&topic("status"), "online", Duration::from_secs(10))
                .await;
            live.wait_for(&topic("crying"), "ON", Duration::from_secs(5))
                .await;
            live.wait_for(&topic("reason"), "tired", Duration::from_secs(5))
                .await;
            live.wait_for(&topic("confidence"), "62.5", Duration::from_secs(5))
                .await;
        }
    };
    said_the_states("wasoff").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(live.on("babycry/wasoff/event").is_empty());
    assert_eq!(handle.status().queued, 0);
    // The link is gone before the next reload asks it for a hand-over.
    task.abort();
    let _ = task.await;
    let handover = handle.hand_over(Duration::from_secs(1)).await;
    let (handle, _task) =
        MqttHandle::resume(&config(broker.port, "wasgone"), device(), states, handover);
    said_the_states("wasgone").await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// Events made while the broker was away: the diagnostics announced at the ConnAck count
/// them, and once they are delivered the retained diagnostics say 0 again by themselves,
/// without waiting for the daemon's next diagnostics tick (none comes while the
/// microphone is lost).
#[tokio::test]
async fn the_events_queued_diagnostic_returns_to_zero_once_the_backlog_is_delivered() {
    let port = free_port();
    let (handle, _task) = MqttHandle::spawn(&config(port, "backlog"), device());
    handle.send(Update::Diagnostics(diagnostics()));
    let sent: Vec<Event> = (0..5).map(|i| window_event(1, i)).collect();
    for e in &sent {
        handle.send(Update::Event(e.clone()));
    }
    wait_until("a failed attempt", Duration::from_secs(5), || {
        handle.status().failures >= 1
    })
    .await;
    let broker = Broker::start_on(port);
    let live = Subscriber::start(broker.port, &["babycry/backlog/#"]).await;
    wait_until("the backlog delivered", Duration::from_secs(10), || {
        live.on("babycry/backlog/event").len() == sent.len()
    })
    .await;
    let queued = |m: &Seen| -> u64 {
        serde_json::from_str::<Value>(&m.payload).unwrap()["events_queued"]
            .as_u64()
            .unwrap()
    };
    wait_until("events_queued back to 0", Duration::from_secs(5), || {
        live.on("babycry/backlog/diagnostics")
            .last()
            .is_some_and(|m| queued(m) == 0)
    })
    .await;
    handle.shutdown(Duration::from_secs(5)).await;
}

/// A shutdown while a long backlog is still going out (a slow broker, a night-long outage
/// being delivered): `offline` is published after the last event, not in the middle. The
/// closing link submits at most half its channel (256) at once; `offline` used to follow
/// those, and the rest of the backlog reached Home Assistant after it, where every entity
/// was unavailable and an event entity drops what it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_long_backlog_says_offline_after_the_last_event() {
    let broker = Broker::start();
    let live = Subscriber::start(broker.port, &["babycry/backlog/#"]).await;
    let (handle, _task) = MqttHandle::spawn(&config(broker.port, "backlog"), device());
    wait_until("connected", Duration::from_secs(10), || {
        handle.status().connected
    })
    .await;
    live.wait_for("babycry/backlog/status", "online", Duration::from_secs(5))
        .await;
    // The broker holds everything (SIGSTOP) while 400 events queue up.
    broker.signal("STOP");
    let sent: Vec<Event> = (0..400).map(|i| window_event(1, i)).collect();
    for e in &sent {
        handle.send(Update::Event(e.clone()));
    }
    wait_until("the events are queued", Duration::from_secs(5), || {
        handle.status().queued == sent.len()
    })
    .await;
    let shutdown = tokio::spawn(handle.shutdown(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.signal("CONT");
    shutdown.await.unwrap();
    wait_until("offline", Duration::from_secs(10), || {
        live.on("babycry/backlog/status")
            .last()
            .map(|m| m.payload.as_str())
            == Some("offline")
    })
    .await;
    let all = live.all();
    let events: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].topic == "babycry/backlog/event")
        .collect();
    let offline = all
        .iter()
        .position(|m| m.topic == "babycry/backlog/status" && m.payload == "offline")
        .unwrap();
    assert_eq!(events.len(), sent.len(), "every event delivered");
    assert!(
        events.iter().all(|&i| i < offline),
        "offline at message {offline}, events up to {:?}",
        events.last()
    );
}
