//! The device last announced to Home Assistant, recorded in the state directory
//! (`mqtt-device.json`: its node id, discovery prefix and base topic) once its retained
//! messages are on the broker. When those change, across a restart or a reload (a new
//! `node_id`, a renamed host that the default node id follows, another base topic or
//! discovery prefix), the link's first connection clears what the old device left
//! retained: its discovery configs and states, all but the topics the new one publishes
//! itself. Without it Home Assistant would keep the old device beside the new one,
//! unavailable for ever, until someone ran `babycryd mqtt-remove` with the old settings.
//!
//! Without a state directory nothing is recorded and nothing is cleared, as before.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::discovery::retained_topics;
use super::queue::write_atomically;
use super::Topics;

/// Name of the record inside the state directory.
pub const DEVICE_FILE: &str = "mqtt-device.json";

/// What the record holds: enough to rebuild the old device's topics.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    node_id: String,
    discovery_prefix: String,
    base: String,
}

impl Record {
    fn of(t: &Topics) -> Self {
        Self {
            node_id: t.node_id.clone(),
            discovery_prefix: t.discovery_prefix.clone(),
            base: t.base.clone(),
        }
    }

    fn topics(&self) -> Topics {
        Topics::new(&self.base, &self.discovery_prefix, &self.node_id)
    }
}

/// The device recorded in `path`: none when there is none yet (a first start) or it
/// cannot be read (logged; the link then records its own device over it).
fn load(path: &Path) -> Option<Topics> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(record = %path.display(), "cannot read the device announced before: {e}");
            return None;
        }
    };
    match serde_json::from_str::<Record>(&text) {
        Ok(r) => Some(r.topics()),
        Err(e) => {
            tracing::warn!(record = %path.display(), "ignoring a damaged record of the device announced before: {e}");
            None
        }
    }
}

/// The retained topics `old` left on the broker that `new` does not publish itself (a
/// changed base topic alone keeps the config topics, which the new discovery rewrites).
pub(crate) fn retirement(old: &Topics, new: &Topics) -> Vec<String> {
    let kept: HashSet<String> = retained_topics(new).into_iter().collect();
    retained_topics(old)
        .into_iter()
        .filter(|t| !kept.contains(t))
        .collect()
}

/// For `babycryd mqtt-remove`: the device recorded in `state_dir` when it is not
/// `current` (a node id, host name, base topic or discovery prefix changed, and no
/// daemon ran since to clear it), as its retained topics `current` does not cover and
/// what tells it apart from `current`, for the user.
pub(crate) fn recorded_other(state_dir: &Path, current: &Topics) -> Option<(Vec<String>, String)> {
    let old = load(&state_dir.join(DEVICE_FILE))?;
    let topics = retirement(&old, current);
    let mut differs = Vec::new();
    if old.node_id != current.node_id {
        differs.push(format!("node {}", old.node_id));
    }
    if old.base != current.base {
        differs.push(format!("base topic {}", old.base));
    }
    if old.discovery_prefix != current.discovery_prefix {
        differs.push(format!("discovery prefix {}", old.discovery_prefix));
    }
    (!topics.is_empty()).then(|| (topics, differs.join(", ")))
}

/// Forgets the recorded device (removed from Home Assistant: nothing left to clear).
pub(crate) fn forget(state_dir: &Path) {
    let path = state_dir.join(DEVICE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(record = %path.display(), "cannot remove the record of the device announced: {e}")
        }
    }
}

/// The link's side of it: what is owed to the broker for the old device, and the record
/// of the new one, written once the old one is cleared (so a connection lost before that
/// clears it again on the next one).
#[derive(Debug)]
pub(crate) struct Retirement {
    record: Option<PathBuf>,
    topics: Topics,
    /// The old device's node id and base, for the log.
    old: String,
    /// Topics still owed an empty retained message.
    owed: Vec<String>,
    /// Owed messages submitted on this connection and not yet acknowledged.
    pending: usize,
    /// Every owed message was submitted on this connection.
    all_submitted: bool,
    recorded: bool,
}

impl Retirement {
    /// Reads the record in `state_dir` (none: nothing to clear, nothing recorded).
    pub fn new(state_dir: Option<&Path>, topics: &Topics) -> Self {
        let record = state_dir.map(|d| d.join(DEVICE_FILE));
        let old = record.as_deref().and_then(load);
        Self {
            owed: old
                .as_ref()
                .map(|old| retirement(old, topics))
                .unwrap_or_default(),
            old: old
                .map(|o| format!("node {} under {}", o.node_id, o.base))
                .unwrap_or_default(),
            record,
            topics: topics.clone(),
            pending: 0,
            all_submitted: false,
            recorded: false,
        }
    }

    /// The topics to clear (an empty retained message each) on a new connection, before
    /// discovery.
    pub fn owed(&self) -> &[String] {
        &self.owed
    }

    /// `count` of [`Retirement::owed`] were submitted on the new connection.
    pub fn submitted(&mut self, count: usize) {
        self.pending = count;
        self.all_submitted = count == self.owed.len();
        if self.owed.is_empty() {
            self.record();
        }
    }

    /// The broker acknowledged one of them.
    pub fn acknowledged(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        if self.pending == 0 && self.all_submitted && !self.owed.is_empty() {
            tracing::info!(
                messages = self.owed.len(),
                "cleared the previous Home Assistant device ({})",
                self.old
            );
            self.owed.clear();
            self.record();
        }
    }

    /// The connection ended: what was not acknowledged is sent again on the next one.
    pub fn connection_lost(&mut self) {
        self.pending = 0;
        self.all_submitted = false;
    }

    /// Records this link's device, once.
    fn record(&mut self) {
        let Some(path) = self.record.as_deref().filter(|_| !self.recorded) else {
            return;
        };
        self.recorded = true;
        let text = serde_json::to_string(&Record::of(&self.topics)).expect("record serialises");
        if let Err(e) = write_atomically(path, &text) {
            tracing::warn!(record = %path.display(), "cannot record the device announced (a later change of node_id, base_topic or discovery_prefix would leave this one in Home Assistant; `babycryd mqtt-remove` removes it): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_new_device_does_not_publish_is_cleared() {
        let old = Topics::new("babycry/nursery", "homeassistant", "nursery");
        assert!(retirement(&old, &old).is_empty());

        // Another base topic, same node: the states move, the configs are rewritten.
        let moved = Topics::new("home/baby", "homeassistant", "nursery");
        assert_eq!(
            retirement(&old, &moved),
            [
                "babycry/nursery/crying",
                "babycry/nursery/reason",
                "babycry/nursery/confidence",
                "babycry/nursery/diagnostics",
                "babycry/nursery/status",
            ]
        );

        // Another node id: every config of the old device goes, and its states.
        let renamed = Topics::new("babycry/cot", "homeassistant", "cot");
        let cleared = retirement(&old, &renamed);
        assert_eq!(cleared.len(), retained_topics(&old).len());
        assert!(cleared.iter().all(|t| !t.contains("cot")));
        assert!(cleared.contains(&"homeassistant/binary_sensor/nursery_crying/config".to_string()));
    }

    /// `mqtt-remove` says which device it removed besides the configured one: what
    /// differs (before, "node nursery" for a device whose node id had not changed).
    #[test]
    fn the_device_recorded_before_is_told_by_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let old = Topics::new("babycry/nursery", "homeassistant", "nursery");
        Retirement::new(Some(dir.path()), &old).submitted(0);
        assert!(recorded_other(dir.path(), &old).is_none());
        let moved = Topics::new("home/baby", "homeassistant", "nursery");
        let (topics, what) = recorded_other(dir.path(), &moved).unwrap();
        assert_eq!(
            (topics.len(), what.as_str()),
            (5, "base topic babycry/nursery")
        );
        let elsewhere = Topics::new("babycry/cot", "ha", "cot");
        let (_, what) = recorded_other(dir.path(), &elsewhere).unwrap();
        assert_eq!(
            what,
            "node nursery, base topic babycry/nursery, discovery prefix homeassistant"
        );
    }

    #[test]
    fn the_record_is_written_once_the_old_device_is_acknowledged_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let old = Topics::new("babycry/nursery", "homeassistant", "nursery");
        let new = Topics::new("babycry/cot", "homeassistant", "cot");

        // First start: nothing recorded, nothing owed; the device is recorded at once.
        let mut first = Retirement::new(Some(dir.path()), &old);
        assert!(first.owed().is_empty());
        first.submitted(0);
        assert_eq!(load(&dir.path().join(DEVICE_FILE)), Some(old.clone()));

        let mut next = Retirement::new(Some(dir.path()), &new);
        let owed = next.owed().len();
        assert_eq!(owed, retained_topics(&old).len());
        // A connection lost before every PUBACK: owed again, the old record kept.
        next.submitted(owed);
        next.acknowledged();
        next.connection_lost();
        assert_eq!(next.owed().len(), owed);
        assert_eq!(load(&dir.path().join(DEVICE_FILE)), Some(old.clone()));
        // Only part submitted: all acknowledged is not all cleared.
        next.submitted(owed - 1);
        (0..owed - 1).for_each(|_| next.acknowledged());
        assert_eq!(next.owed().len(), owed);
        next.connection_lost();
        next.submitted(owed);
        (0..owed).for_each(|_| next.acknowledged());
        assert!(next.owed().is_empty());
        assert_eq!(load(&dir.path().join(DEVICE_FILE)), Some(new.clone()));

        // A damaged record is ignored (nothing to clear) and replaced.
        std::fs::write(dir.path().join(DEVICE_FILE), "{not json").unwrap();
        let mut damaged = Retirement::new(Some(dir.path()), &old);
        assert!(damaged.owed().is_empty());
        damaged.submitted(0);
        assert_eq!(load(&dir.path().join(DEVICE_FILE)), Some(old));
    }
}
