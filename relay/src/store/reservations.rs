//! Reservations in `reservations.json` in the data directory: which place belongs to which
//! token and tunnel name, across reconnects and restarts. The file half of [`super::FileStore`].

use burrow_common::sync;
use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::MAX_RESERVATIONS_PER_TOKEN;
use crate::{
    claims::{Place, TunnelKey},
    files,
    tokens::now,
};

const RESERVATIONS_FILE: &str = "reservations.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: TunnelKey,
    #[serde(flatten)]
    place: Place,
    /// Unix seconds when the tunnel was last released; ignored while `active`.
    last_seen: u64,
    active: bool,
    /// Orders releases within one second, for forgetting the oldest; 0 for those loaded
    /// from the file, which are older than any made since.
    #[serde(skip)]
    released_as: u64,
}

impl Entry {
    /// Held now, or released less than `ttl` before `at` (unix seconds).
    fn unexpired(&self, at: u64, ttl: Duration) -> bool {
        self.active || at.saturating_sub(self.last_seen) <= ttl.as_secs()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct ReservationFile {
    reservations: Vec<Entry>,
}

/// Reservations in `reservations.json` in the data directory.
///
/// Claims and releases update memory under a short lock; a writer thread persists the
/// latest state, so a burst of reconnecting agents never waits on disk (or fsync) to claim,
/// and a burst of changes costs one write.
pub(super) struct FileReservations {
    ttl: Duration,
    /// Places one token may keep: [`MAX_RESERVATIONS_PER_TOKEN`] but in tests.
    pub(super) cap: usize,
    entries: Arc<Mutex<HashMap<TunnelKey, Entry>>>,
    dirty: Option<mpsc::SyncSender<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Changes made so far, counted under the entries' lock.
    changes: Arc<AtomicU64>,
    /// Changes the file holds, published by the writer after each write.
    saved: tokio::sync::watch::Receiver<u64>,
}

impl FileReservations {
    /// Loads the file. Tunnels that were active when the relay stopped start their TTL now,
    /// so a relay that was down for a while does not hand their ports to someone else.
    /// Entries written before keys had token ids get the id of the token that has their
    /// name now (`ids` lists them, name to id, read only for such a file), or go if no token
    /// has it.
    pub(super) fn open(
        data_dir: &Path,
        ttl: Duration,
        ids: impl FnOnce() -> anyhow::Result<HashMap<String, String>>,
    ) -> anyhow::Result<Self> {
        let path = data_dir.join(RESERVATIONS_FILE);
        let file: ReservationFile = match files::read_optional(&path)? {
            None => ReservationFile::default(),
            Some(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?,
        };
        let by_name = file.reservations.iter().any(|e| e.key.token_id.is_empty());
        let ids =
            if by_name { ids().context("read the tokens to key reservations by token id")? } else { HashMap::new() };
        let started = now();
        let entries = file
            .reservations
            .into_iter()
            .filter_map(|e| keyed_by_id(e, &ids))
            .map(|mut e| {
                if e.active {
                    e.active = false;
                    e.last_seen = started;
                }
                (e.key.clone(), e)
            })
            .collect();
        let entries = Arc::new(Mutex::new(entries));
        let (dirty, wake) = mpsc::sync_channel(1);
        let changes = Arc::new(AtomicU64::new(0));
        let (stored, saved) = tokio::sync::watch::channel(0);
        let writer = std::thread::Builder::new()
            .name("reservations".into())
            .spawn({
                let entries = entries.clone();
                let changes = changes.clone();
                move || persist_changes(&path, &entries, &changes, &wake, &stored)
            })
            .context("start reservation writer")?;
        let cap = MAX_RESERVATIONS_PER_TOKEN;
        Ok(Self { ttl, cap, entries, dirty: Some(dirty), writer: Some(writer), changes, saved })
    }

    fn live(&self, entry: &Entry) -> bool {
        entry.unexpired(now(), self.ttl)
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<TunnelKey, Entry>)) -> anyhow::Result<()> {
        let mut entries = sync::lock(&self.entries);
        change(&mut entries);
        let at = now();
        entries.retain(|_, e| e.unexpired(at, self.ttl));
        self.changes.fetch_add(1, Ordering::SeqCst);
        if let Some(dirty) = &self.dirty {
            // A full channel means a write is already due; it will see this change too.
            dirty.try_send(()).ok();
        }
        Ok(())
    }

    fn with_entries<T>(&self, read: impl FnOnce(&HashMap<TunnelKey, Entry>) -> T) -> T {
        read(&sync::lock(&self.entries))
    }
}

impl Drop for FileReservations {
    /// Writes the last state before the relay exits.
    fn drop(&mut self) {
        self.dirty.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::warn!("reservation writer panicked");
        }
    }
}

/// `entry`, with its token id filled in from its token name if the file predates ids.
fn keyed_by_id(mut entry: Entry, ids: &HashMap<String, String>) -> Option<Entry> {
    if entry.key.token_id.is_empty() {
        entry.key.token_id = ids.get(&entry.key.token)?.clone();
    }
    Some(entry)
}

/// Records that `key` serves on `place`, moving its reservation there; its token keeps `cap`
/// places at most.
fn hold(entries: &mut HashMap<TunnelKey, Entry>, key: &TunnelKey, place: &Place, cap: usize) {
    entries.retain(|k, e| k == key || e.place != *place);
    let entry = Entry { key: key.clone(), place: place.clone(), last_seen: now(), active: true, released_as: 0 };
    entries.insert(key.clone(), entry);
    forget_oldest_released(entries, &key.token_id, cap);
}

/// Keeps at most `cap` entries of the token `token_id`, dropping the ones released longest
/// ago; held ones are never dropped.
fn forget_oldest_released(entries: &mut HashMap<TunnelKey, Entry>, token_id: &str, cap: usize) {
    let of_token = entries.values().filter(|e| e.key.token_id == token_id).count();
    let Some(excess) = of_token.checked_sub(cap).filter(|n| *n > 0) else { return };
    let mut released: Vec<((u64, u64), TunnelKey)> = entries
        .values()
        .filter(|e| e.key.token_id == token_id && !e.active)
        .map(|e| ((e.last_seen, e.released_as), e.key.clone()))
        .collect();
    released.sort_unstable_by_key(|(when, _)| *when);
    for (_, key) in released.into_iter().take(excess) {
        entries.remove(&key);
    }
}

fn persist_changes(
    path: &Path,
    entries: &Mutex<HashMap<TunnelKey, Entry>>,
    changes: &AtomicU64,
    wake: &mpsc::Receiver<()>,
    stored: &tokio::sync::watch::Sender<u64>,
) {
    while wake.recv().is_ok() {
        let (snapshot, upto) = {
            let entries = sync::lock(entries);
            (ReservationFile { reservations: entries.values().cloned().collect() }, changes.load(Ordering::SeqCst))
        };
        let written = serde_json::to_vec_pretty(&snapshot)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(files::write_private(path, &bytes)?));
        match written {
            Ok(()) => {
                stored.send_replace(upto);
            }
            Err(e) => tracing::warn!("could not save port reservations: {e:#}"),
        }
    }
}

impl FileReservations {
    pub(super) fn place_for(&self, key: &TunnelKey) -> Option<Place> {
        self.with_entries(|e| e.get(key).filter(|e| self.live(e)).map(|e| e.place.clone()))
    }

    pub(super) fn owner_of(&self, place: &Place) -> Option<TunnelKey> {
        self.with_entries(|e| e.values().find(|e| e.place == *place && self.live(e)).map(|e| e.key.clone()))
    }

    /// Compare-and-set: `key` holds `place` unless another tunnel holds or reserves it.
    pub(super) fn claim(&self, key: &TunnelKey, place: &Place) -> anyhow::Result<bool> {
        let mut won = false;
        self.update(|entries| {
            let at = now();
            let taken = entries.values().any(|e| e.place == *place && e.key != *key && e.unexpired(at, self.ttl));
            if !taken {
                hold(entries, key, place, self.cap);
                won = true;
            }
        })?;
        Ok(won)
    }

    /// `key` is serving on `place` now, whoever reserved it.
    #[cfg(test)]
    fn hold(&self, key: &TunnelKey, place: &Place) -> anyhow::Result<()> {
        self.update(|entries| hold(entries, key, place, self.cap))
    }

    /// Waits until the changes made so far are in the file, for `within` at most.
    pub(super) async fn saved(&self, within: Duration) -> bool {
        let (target, mut saved) = (self.changes.load(Ordering::SeqCst), self.saved.clone());
        tokio::time::timeout(within, saved.wait_for(|stored| *stored >= target)).await.is_ok()
    }

    pub(super) fn release(&self, key: &TunnelKey, place: &Place) -> anyhow::Result<()> {
        let released_as = self.changes.load(Ordering::SeqCst) + 1;
        self.update(|entries| {
            if let Some(e) = entries.get_mut(key).filter(|e| e.place == *place) {
                e.active = false;
                e.last_seen = now();
                e.released_as = released_as;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(token: &str, tunnel: &str) -> TunnelKey {
        TunnelKey::of(token, tunnel)
    }

    /// Opens a file whose keys all have ids, as the relay writes them.
    fn open(dir: &Path, ttl: Duration) -> anyhow::Result<FileReservations> {
        FileReservations::open(dir, ttl, || anyhow::bail!("the token ids are asked for only by a file keyed by name"))
    }

    fn port(port: u16) -> Place {
        Place::Port(port)
    }

    #[test]
    fn survives_reopen_and_expires() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), Duration::from_secs(3600))?;
        store.hold(&key("a", "web"), &port(20001))?;
        store.release(&key("a", "web"), &port(20001))?;
        store.hold(&key("b", "ssh"), &port(20002))?;
        drop(store);

        let reopened = open(dir.path(), Duration::from_secs(3600))?;
        assert_eq!(reopened.place_for(&key("a", "web")), Some(port(20001)));
        assert_eq!(reopened.owner_of(&port(20002)), Some(key("b", "ssh")));
        assert_eq!(reopened.place_for(&key("a", "other")), None);

        // A reservation released long ago has expired; one active at restart gets a fresh TTL.
        std::fs::write(
            dir.path().join(RESERVATIONS_FILE),
            r#"{"reservations":[
                {"token":"a","token_id":"a","tunnel":"old","port":20003,"last_seen":0,"active":false},
                {"token":"a","token_id":"a","tunnel":"crashed","port":20004,"last_seen":0,"active":true}]}"#,
        )?;
        let restarted = open(dir.path(), Duration::from_secs(3600))?;
        assert_eq!(restarted.place_for(&key("a", "old")), None);
        assert_eq!(restarted.owner_of(&port(20003)), None);
        assert_eq!(restarted.place_for(&key("a", "crashed")), Some(port(20004)));
        Ok(())
    }

    #[test]
    fn a_file_keyed_by_token_name_is_keyed_by_id_on_open() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join(RESERVATIONS_FILE),
            r#"{"reservations":[
                {"token":"kept","tunnel":"web","port":20001,"last_seen":0,"active":true},
                {"token":"gone","tunnel":"web","port":20002,"last_seen":0,"active":true}]}"#,
        )?;
        let ids = HashMap::from([("kept".to_string(), "0011223344556677".to_string())]);
        let store = FileReservations::open(dir.path(), Duration::from_secs(3600), || Ok(ids))?;
        let kept = TunnelKey { token: "kept".into(), token_id: "0011223344556677".into(), tunnel: "web".into() };
        assert_eq!(store.place_for(&kept), Some(port(20001)));
        assert_eq!(store.owner_of(&port(20002)), None, "no token has that name any more");
        Ok(())
    }

    #[test]
    fn subdomains_are_reserved_like_ports() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), Duration::from_secs(3600))?;
        let myapp = Place::Subdomain("myapp".into());
        store.hold(&key("a", "web"), &myapp)?;
        store.release(&key("a", "web"), &myapp)?;
        drop(store);
        let reopened = open(dir.path(), Duration::from_secs(3600))?;
        assert_eq!(reopened.place_for(&key("a", "web")), Some(myapp.clone()));
        assert_eq!(reopened.owner_of(&myapp), Some(key("a", "web")));
        assert_eq!(reopened.owner_of(&Place::Subdomain("other".into())), None);
        Ok(())
    }

    #[test]
    fn hostnames_are_reserved_like_subdomains() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), Duration::from_secs(3600))?;
        let custom = Place::Hostname("app.example.org".into());
        store.hold(&key("a", "web"), &custom)?;
        store.release(&key("a", "web"), &custom)?;
        drop(store);
        let text = std::fs::read_to_string(dir.path().join(RESERVATIONS_FILE))?;
        assert!(text.contains(r#""hostname": "app.example.org""#), "{text}");
        let reopened = open(dir.path(), Duration::from_secs(3600))?;
        assert_eq!(reopened.place_for(&key("a", "web")), Some(custom.clone()));
        assert_eq!(reopened.owner_of(&custom), Some(key("a", "web")));
        assert!(!reopened.claim(&key("b", "web"), &custom)?, "reserved for another token");
        // The same name as a subdomain is another place.
        assert_eq!(reopened.owner_of(&Place::Subdomain("app.example.org".into())), None);
        Ok(())
    }

    #[test]
    fn a_token_keeps_a_bounded_number_of_reservations() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), Duration::from_secs(3600))?;
        let held = key("churn", "held");
        store.hold(&held, &Place::Subdomain("held".into()))?;
        for i in 0..MAX_RESERVATIONS_PER_TOKEN + 10 {
            let (tunnel, place) = (key("churn", &format!("t{i}")), Place::Subdomain(format!("n{i}")));
            store.hold(&tunnel, &place)?;
            store.release(&tunnel, &place)?;
        }
        store.hold(&key("other", "web"), &port(20001))?;
        let kept = |token: &str| store.with_entries(|e| e.values().filter(|e| e.key.token_id == token).count());
        assert_eq!(kept("churn"), MAX_RESERVATIONS_PER_TOKEN);
        assert!(store.place_for(&held).is_some(), "a held place is never forgotten");
        assert_eq!(store.place_for(&key("churn", "t0")), None, "the oldest released went first");
        assert!(store.place_for(&key("churn", &format!("t{}", MAX_RESERVATIONS_PER_TOKEN + 9))).is_some());
        assert_eq!(kept("other"), 1, "other tokens are not touched");
        Ok(())
    }

    #[test]
    fn a_claim_wins_only_a_place_free_or_already_the_claimants() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), Duration::from_secs(3600))?;
        assert!(store.claim(&key("a", "web"), &port(20001))?);
        assert!(!store.claim(&key("b", "web"), &port(20001))?, "held by a");
        store.release(&key("a", "web"), &port(20001))?;
        assert!(!store.claim(&key("b", "web"), &port(20001))?, "reserved for a");
        assert!(store.claim(&key("a", "web"), &port(20001))?, "a's own reservation");
        assert!(store.claim(&key("a", "web"), &port(20002))?);
        assert_eq!(store.owner_of(&port(20001)), None, "a claim moves the claimant's reservation");
        Ok(())
    }

    #[test]
    fn holding_a_port_moves_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path(), Duration::from_secs(60))?;
        store.hold(&key("a", "web"), &port(20001))?;
        store.hold(&key("a", "web"), &port(20005))?;
        assert_eq!(store.owner_of(&port(20001)), None);
        assert_eq!(store.place_for(&key("a", "web")), Some(port(20005)));
        Ok(())
    }
}
