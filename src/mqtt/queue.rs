//! The outbox: messages that must reach the broker (events and the episode event), in
//! order, until the broker acknowledges them. Bounded (the oldest is dropped and
//! counted on overflow) and optionally mirrored to a small spool file in the state
//! directory, so undelivered events survive a daemon restart. The spool is rewritten
//! atomically (temp file synced, renamed, then the directory synced, so the rename
//! survives a power cut). It is written ahead: the link saves it as each event arrives,
//! before publishing it (events are rare, one per 7 s window while crying), and mirrors
//! deliveries at most once a second; the file is removed once nothing is undelivered. A
//! write that fails (full disk, read-only directory) stays owed and is tried again at
//! the next save, so the events reach the disk once it takes writes again; the failure
//! is logged once per streak. The spool also carries how many messages overflow dropped
//! (a first line `{"dropped":N}`), so a restart during an outage still reports them.
//! It is loaded line by line: a damaged line costs only
//! itself, and a spool that cannot be read at all is moved aside
//! (`mqtt-spool.jsonl.unreadable`), never overwritten.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The topics (under the base topic) of the messages the outbox carries: one per
/// classified window and episode end, and Home Assistant's episode event.
pub(crate) const EVENT_TOPIC: &str = "event";
pub(crate) const EPISODE_TOPIC: &str = "episode";
const OUTBOX_TOPICS: [&str; 2] = [EVENT_TOPIC, EPISODE_TOPIC];

/// The longest payload a spool line may bring back: far above any event (about 1 KB),
/// well under the client's 256 KiB packet limit. A longer one could never be sent: it
/// would end the connection at every attempt, and hold up every event behind it.
const MAX_SPOOLED_PAYLOAD: usize = 64 * 1024;

/// One message waiting for its PUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queued {
    #[serde(skip)]
    pub seq: u64,
    /// Topic under the base topic (`event`, `episode`).
    pub topic: String,
    pub payload: String,
}

/// The spool's line for the count of dropped messages.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DroppedLine {
    dropped: u64,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    items: VecDeque<Queued>,
    capacity: usize,
    next_seq: u64,
    /// Dropped on overflow since start, and by earlier runs whose spool said so.
    pub dropped: u64,
    spool: Option<PathBuf>,
    /// The spool file differs from `items`.
    dirty: bool,
    /// The last write of the spool failed: warned once, retried at every save.
    failing: bool,
    /// Spool files of earlier links (a reload that moved the spool) that may still hold
    /// copies of these messages: removed once `items` is mirrored in their place.
    superseded: Vec<PathBuf>,
}

/// The undelivered messages of a link that a reload replaces, in order, for the next
/// one ([`Outbox::carry`], [`Outbox::resume`]).
#[derive(Debug, Default)]
pub(crate) struct Carried {
    items: Vec<Queued>,
    dropped: u64,
    /// Spool files that may hold copies of `items`: the old link's and any it had not
    /// removed yet.
    copies: Vec<PathBuf>,
}

impl Carried {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Outbox {
    /// An outbox of `capacity`, loaded from `spool` when that file exists.
    #[cfg(test)]
    pub fn new(capacity: usize, spool: Option<PathBuf>) -> Self {
        Self::resume(capacity, spool, None)
    }

    /// An outbox of `capacity` that takes over the messages of the link a reload replaced
    /// (after any left in `spool` by an earlier run, which are older), or, without them,
    /// loaded from `spool`. The spool file the carried messages came from is not read:
    /// it holds copies of them. Other files holding copies are removed once the messages
    /// are mirrored to `spool` (or at once without one), so a restart does not send them
    /// twice.
    pub fn resume(capacity: usize, spool: Option<PathBuf>, carried: Option<Carried>) -> Self {
        let mut outbox = Self {
            items: VecDeque::new(),
            capacity,
            next_seq: 1,
            dropped: 0,
            spool,
            dirty: false,
            failing: false,
            superseded: Vec::new(),
        };
        let Some(mut carried) = carried else {
            if let Some(path) = outbox.spool.clone() {
                outbox.load(&path);
            }
            return outbox;
        };
        let before = carried.copies.len();
        carried.copies.retain(|c| Some(c) != outbox.spool.as_ref());
        if let (Some(path), true) = (outbox.spool.clone(), carried.copies.len() == before) {
            outbox.load(&path);
        }
        for q in carried.items {
            outbox.push(q.topic, q.payload);
        }
        outbox.dropped = outbox.dropped.saturating_add(carried.dropped);
        outbox.superseded = carried.copies;
        outbox.dirty = true;
        outbox
    }

    /// Everything undelivered, in order, for the link that replaces this one. The spool
    /// file stays as it is (written by the last save): should the next link not start
    /// (MQTT turned off), the next run still finds the messages there.
    pub fn carry(self) -> Carried {
        let mut copies = self.superseded;
        copies.extend(self.spool);
        Carried {
            items: self.items.into(),
            dropped: self.dropped,
            copies,
        }
    }

    /// Loads the spool line by line, as bytes: a line that is not a message (a stray
    /// byte, invalid UTF-8, a torn write) is skipped and counted, and every other one
    /// kept in order. Reading it as one string would lose them all to one bad byte, and
    /// the next save would then overwrite the spool with an empty outbox.
    fn load(&mut self, path: &Path) {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                // Moved aside, so the next save does not replace what may still be
                // recovered by hand.
                let aside = path.with_extension("jsonl.unreadable");
                match std::fs::rename(path, &aside) {
                    Ok(()) => {
                        tracing::warn!(spool = %path.display(), "cannot read the spool: {e}; moved to {}", aside.display())
                    }
                    Err(re) => {
                        tracing::warn!(spool = %path.display(), "cannot read the spool: {e}; nor move it aside: {re}")
                    }
                }
                return;
            }
        };
        let (mut bad, mut first_error) = (0usize, None);
        for line in bytes.split(|&b| b == b'\n') {
            if line.trim_ascii().is_empty() {
                continue;
            }
            // A line that parses but names another topic (one with `#` or `+` is refused
            // by the client) or is too long to send would stop the queue at it for good.
            let message = serde_json::from_slice::<Queued>(line)
                .map_err(|e| e.to_string())
                .and_then(|q| {
                    if !OUTBOX_TOPICS.contains(&q.topic.as_str()) {
                        Err(format!("topic {:?} is not one the daemon sends", q.topic))
                    } else if q.payload.len() > MAX_SPOOLED_PAYLOAD {
                        Err(format!("a payload of {} bytes", q.payload.len()))
                    } else {
                        Ok(q)
                    }
                });
            // Only a line that is no message is read again, as the count.
            match message {
                Ok(q) => self.push(q.topic, q.payload),
                Err(e) => match serde_json::from_slice::<DroppedLine>(line) {
                    Ok(d) => self.dropped = self.dropped.saturating_add(d.dropped),
                    Err(_) => {
                        bad += 1;
                        first_error.get_or_insert(e);
                    }
                },
            }
        }
        if let Some(e) = first_error {
            tracing::warn!(spool = %path.display(), skipped = bad, kept = self.items.len(), "skipping bad spool lines (the first: {e})");
        }
        if !self.items.is_empty() {
            tracing::info!(spool = %path.display(), events = self.items.len(), "loaded undelivered events from the spool");
        }
        // The file holds these already; the bad lines go at the next save.
        self.dirty = false;
    }

    /// Appends a message; drops (and counts) the oldest beyond capacity.
    pub fn push(&mut self, topic: String, payload: String) {
        if self.items.len() >= self.capacity {
            self.items.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.items.push_back(Queued {
            seq: self.next_seq,
            topic,
            payload,
        });
        self.next_seq += 1;
        self.dirty = true;
    }

    /// Removes a delivered message; false when it is no longer there.
    pub fn remove(&mut self, seq: u64) -> bool {
        match self.items.binary_search_by_key(&seq, |q| q.seq) {
            Ok(i) => {
                self.items.remove(i);
                self.dirty = true;
                true
            }
            Err(_) => false,
        }
    }

    /// The first message with `seq >= from`.
    pub fn next_from(&self, from: u64) -> Option<&Queued> {
        let i = self.items.partition_point(|q| q.seq < from);
        self.items.get(i)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Mirrors the queue to the spool file if it changed: rewritten when messages are
    /// waiting, removed when none are.
    pub fn save_if_dirty(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(path) = self.spool.clone() else {
            self.dirty = false;
            self.remove_superseded();
            return;
        };
        match self.write_spool(&path) {
            Ok(()) => {
                self.dirty = false;
                self.remove_superseded();
                if self.failing {
                    self.failing = false;
                    tracing::info!(spool = %path.display(), events = self.items.len(), "the spool is written again");
                }
            }
            // Still dirty: the next save (the spool tick, a second later) tries again, so
            // the events reach the disk once it takes writes again, at the latest at
            // shutdown. Warned once per streak of failures, not every second.
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(spool = %path.display(), "cannot write the spool (events stay in memory): {e}; trying again every second");
            }
            Err(e) => tracing::debug!(spool = %path.display(), "cannot write the spool: {e}"),
        }
    }

    /// Removes the spool files of earlier links, now that these messages are mirrored in
    /// their place (or kept in memory only, as configured).
    fn remove_superseded(&mut self) {
        for old in self.superseded.drain(..) {
            match std::fs::remove_file(&old) {
                Ok(()) => sync_directory_of(&old),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(spool = %old.display(), "cannot remove the previous spool (its events may be sent again by a later run): {e}")
                }
            }
        }
    }

    fn write_spool(&self, path: &Path) -> std::io::Result<()> {
        if self.items.is_empty() {
            return match std::fs::remove_file(path) {
                Ok(()) => {
                    sync_directory_of(path);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        let mut text = String::new();
        if self.dropped > 0 {
            let line = DroppedLine {
                dropped: self.dropped,
            };
            text.push_str(&serde_json::to_string(&line).expect("a count serialises"));
            text.push('\n');
        }
        for q in &self.items {
            text.push_str(&serde_json::to_string(q).expect("queued messages serialise"));
            text.push('\n');
        }
        write_atomically(path, &text)
    }
}

/// Replaces `path` (mode 600, its directory made if missing) with `text` so that a power
/// cut leaves either the old file or the new one: a temporary file beside it, synced,
/// renamed over it, then the directory synced.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_directory_of(path);
    Ok(())
}

/// Makes a rename or removal in the spool's directory durable: until the directory
/// itself is synced, a power cut (the usual end of a Raspberry Pi) can bring back the
/// old spool, resending delivered events, or no spool at all, losing the new ones. Best
/// effort: the file's own contents are already synced, and some file systems cannot
/// sync a directory, so a failure is logged (once per process) and not an error.
fn sync_directory_of(path: &Path) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(dir) = path.parent() else {
        return;
    };
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(dir = %dir.display(), "cannot sync the spool's directory (a power cut may bring back an older spool): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_drops_the_oldest_and_counts_it() {
        let mut q = Outbox::new(3, None);
        for i in 0..5 {
            q.push("event".into(), format!("{i}"));
        }
        assert_eq!(q.dropped, 2);
        assert_eq!(q.len(), 3);
        let first = q.next_from(0).unwrap();
        assert_eq!((first.seq, first.payload.as_str()), (3, "2"));
        assert!(q.remove(4));
        assert!(!q.remove(4));
        assert_eq!(q.next_from(4).unwrap().payload, "4");
    }

    /// Messages dropped while the broker is away are still counted after a restart (in
    /// the diagnostics' `events_dropped`): before, a restart before the broker came back
    /// forgot them.
    #[test]
    fn the_spool_keeps_the_count_of_dropped_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let mut q = Outbox::new(2, Some(path.clone()));
        for i in 0..7 {
            q.push("event".into(), format!("{i}"));
        }
        q.save_if_dirty();
        let mut again = Outbox::new(2, Some(path.clone()));
        assert_eq!((again.dropped, again.len()), (5, 2));
        assert_eq!(again.next_from(0).unwrap().payload, "5");
        // A damaged count cannot overflow it.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("{\"dropped\":5}", "{\"dropped\":18446744073709551615}"),
        )
        .unwrap();
        again = Outbox::new(2, Some(path.clone()));
        again.push("event".into(), "7".into());
        assert_eq!(again.dropped, u64::MAX);
    }

    #[test]
    fn the_spool_survives_a_restart_and_disappears_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("spool.jsonl");
        let mut q = Outbox::new(10, Some(path.clone()));
        q.push("event".into(), "{\"a\":1}".into());
        q.push("episode".into(), "{\"b\":2}".into());
        q.save_if_dirty();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut again = Outbox::new(10, Some(path.clone()));
        assert_eq!(again.len(), 2);
        let first = again.next_from(0).unwrap().clone();
        assert_eq!(
            (first.topic.as_str(), first.payload.as_str()),
            ("event", "{\"a\":1}")
        );
        let second = again.next_from(first.seq + 1).unwrap().clone();
        assert_eq!(second.topic, "episode");
        again.remove(first.seq);
        again.remove(second.seq);
        again.save_if_dirty();
        assert!(!path.exists());
    }

    /// A spool that cannot be written stays owed: the next save after the directory
    /// comes back writes it.
    #[test]
    fn a_failed_spool_write_is_retried_on_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::write(&state, b"").unwrap();
        let path = state.join("spool.jsonl");
        let mut q = Outbox::new(10, Some(path.clone()));
        q.push("event".into(), "{\"a\":1}".into());
        q.save_if_dirty();
        assert!(!path.exists(), "below a regular file: cannot be written");
        assert!(q.dirty && q.failing);
        q.save_if_dirty();
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir(&state).unwrap();
        q.save_if_dirty();
        let text = std::fs::read_to_string(&path).expect("written once the directory is back");
        assert_eq!(
            text,
            "{\"topic\":\"event\",\"payload\":\"{\\\"a\\\":1}\"}\n"
        );
        assert!(!q.dirty && !q.failing, "the streak of failures is over");
    }

    /// "topic payload" of each message an outbox loads from the spool at `path`.
    fn loaded_from(path: &Path) -> Vec<String> {
        Outbox::new(10, Some(path.to_owned()))
            .items
            .into_iter()
            .map(|m| format!("{} {}", m.topic, m.payload))
            .collect()
    }

    /// A spool line that is not valid UTF-8 (a bad sector, a stray byte) costs that line
    /// only: the events on either side of it are loaded, in order.
    #[test]
    fn a_bad_byte_in_the_spool_costs_only_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let mut text = b"{\"topic\":\"event\",\"payload\":\"first\"}\n".to_vec();
        text.extend_from_slice(b"{\"topic\":\"event\",\"payload\":\"bad \xff\"}\n");
        text.extend_from_slice(b"{\"topic\":\"episode\",\"payload\":\"second\"}\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(loaded_from(&path), ["event first", "episode second"]);
    }

    /// A line that parses but could never be sent (a topic the client refuses, a payload
    /// over the packet limit) costs only itself too: kept, it would hold up every event
    /// after it for good.
    #[test]
    fn a_spool_line_that_could_never_be_sent_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let huge = "x".repeat(300 * 1024);
        let text = format!(
            "{{\"topic\":\"ev#nt\",\"payload\":\"a\"}}\n{{\"topic\":\"event\",\"payload\":\"{huge}\"}}\n{{\"topic\":\"event\",\"payload\":\"good\"}}\n"
        );
        std::fs::write(&path, text).unwrap();
        assert_eq!(loaded_from(&path), ["event good"]);
    }

    /// A spool that cannot be read at all is moved aside instead of being replaced by
    /// the next save.
    #[test]
    fn an_unreadable_spool_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"kept").unwrap();
        let mut q = Outbox::new(10, Some(path.clone()));
        assert_eq!(q.len(), 0);
        let aside = dir.path().join("spool.jsonl.unreadable");
        assert_eq!(std::fs::read(aside.join("inside")).unwrap(), b"kept");
        q.push("event".into(), "{}".into());
        q.save_if_dirty();
        assert!(path.is_file() && !q.dirty);
    }

    fn payloads(q: &Outbox) -> Vec<&str> {
        q.items.iter().map(|m| m.payload.as_str()).collect()
    }

    /// The payloads in the spool file (not its count of dropped messages).
    fn spooled(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| serde_json::from_str::<DroppedLine>(l).is_err())
            .map(|l| serde_json::from_str::<Queued>(l).unwrap().payload)
            .collect()
    }

    /// A reload that keeps the spool file: the new outbox has the old one's messages
    /// once each, in order, not again from the file the old one wrote.
    #[test]
    fn a_carried_outbox_on_the_same_spool_is_not_loaded_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let mut old = Outbox::new(10, Some(path.clone()));
        for p in ["a", "b", "c"] {
            old.push("event".into(), p.into());
        }
        let first = old.next_from(0).unwrap().seq;
        old.remove(first);
        old.dropped = 2;
        old.save_if_dirty();
        let mut new = Outbox::resume(10, Some(path.clone()), Some(old.carry()));
        assert_eq!(payloads(&new), ["b", "c"]);
        assert_eq!(new.dropped, 2);
        new.save_if_dirty();
        assert_eq!(spooled(&path), ["b", "c"]);
    }

    /// A reload that moves the spool (another state directory): what an earlier run
    /// left there comes first, then the carried messages; the old file goes once they
    /// are in the new one.
    #[test]
    fn a_carried_outbox_moves_to_the_new_spool_and_removes_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let mut earlier = Outbox::new(10, Some(b.clone()));
        earlier.push("event".into(), "left in b".into());
        earlier.save_if_dirty();
        let mut old = Outbox::new(10, Some(a.clone()));
        old.push("event".into(), "x".into());
        old.push("episode".into(), "y".into());
        old.save_if_dirty();
        let mut new = Outbox::resume(10, Some(b.clone()), Some(old.carry()));
        assert_eq!(payloads(&new), ["left in b", "x", "y"]);
        assert!(a.exists(), "kept until the new spool holds its events");
        new.save_if_dirty();
        assert_eq!(spooled(&b), ["left in b", "x", "y"]);
        assert!(!a.exists());

        // Spool turned off: memory only, and the old file goes at the first save.
        let mut off = Outbox::resume(10, None, Some(new.carry()));
        assert_eq!(payloads(&off), ["left in b", "x", "y"]);
        off.save_if_dirty();
        assert!(!b.exists());
    }
}
