//! The certificates the relay manages, one entry per certificate, with where each stands:
//! what the handshakes read, what the order task updates, what `/api` and `/metrics` show.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{config::Challenge, stored::Issued};

/// The first wait after a failed order; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Due for an order, none running yet.
    Wanted,
    Ordering,
    Valid,
    /// The last order failed; the next one waits for `next_attempt`.
    Failed,
}

/// One certificate: the names it is for and how they are checked, what is served now, and
/// when the next order is due.
pub(crate) struct Entry {
    pub(crate) names: Vec<String>,
    pub(crate) challenge: Challenge,
    pub(crate) issued: Option<Issued>,
    pub(crate) state: State,
    pub(crate) last_error: Option<String>,
    failures: u32,
    /// Renewal for a valid certificate, a retry after a failure; `None` while ordering.
    pub(crate) next_attempt: Option<SystemTime>,
    /// Ordered at start and kept renewed; an on-demand name without a certificate is ordered
    /// again only when a visitor asks for it.
    pub(crate) standing: bool,
}

impl Entry {
    pub(crate) fn wanted(names: Vec<String>, challenge: Challenge, standing: bool) -> Self {
        let now = SystemTime::now();
        Self {
            names,
            challenge,
            issued: None,
            state: State::Wanted,
            last_error: None,
            failures: 0,
            next_attempt: Some(now),
            standing,
        }
    }

    /// A certificate read from disk; it is standing if the relay's own names want it.
    pub(crate) fn stored(issued: Issued, challenge: Challenge) -> Self {
        let names = issued.names.clone();
        let mut entry = Self::wanted(names, challenge, false);
        entry.issued_now(issued, None);
        entry
    }

    pub(crate) fn issued_now(&mut self, issued: Issued, renew_at: Option<SystemTime>) {
        self.next_attempt = Some(renew_at.unwrap_or_else(|| issued.renew_at()));
        self.issued = Some(issued);
        self.state = State::Valid;
        self.last_error = None;
        self.failures = 0;
    }

    /// Records a failed order; a certificate held goes on being served.
    pub(crate) fn failed(&mut self, error: String) {
        self.failures += 1;
        let backoff = FIRST_BACKOFF.saturating_mul(1 << self.failures.min(16).saturating_sub(1)).min(MAX_BACKOFF);
        self.next_attempt = Some(SystemTime::now() + backoff);
        self.state = State::Failed;
        self.last_error = Some(error);
    }

    /// Whether the timer should start an order for this entry now.
    pub(crate) fn due(&self, now: SystemTime) -> bool {
        let timed = self.standing || self.issued.is_some() || self.state == State::Wanted;
        timed && self.state != State::Ordering && self.next_attempt.is_some_and(|at| at <= now)
    }
}

/// Every managed certificate, by id (its first name), with an index from each name.
#[derive(Default)]
pub(crate) struct Table {
    entries: HashMap<String, Entry>,
    by_name: HashMap<String, String>,
}

impl Table {
    pub(crate) fn insert(&mut self, id: String, entry: Entry) {
        for name in &entry.names {
            self.by_name.insert(name.clone(), id.clone());
        }
        self.entries.insert(id, entry);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            for name in &entry.names {
                self.by_name.remove(name);
            }
        }
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.get_mut(id)
    }

    /// The entry covering `name`: its own, or the wildcard of its parent domain.
    pub(crate) fn covering(&self, name: &str) -> Option<(&str, &Entry)> {
        let wildcard = name.split_once('.').map(|(_, parent)| format!("*.{parent}"));
        let id = self.by_name.get(name).or_else(|| wildcard.and_then(|w| self.by_name.get(&w)))?;
        Some((id.as_str(), self.entries.get(id)?))
    }

    pub(crate) fn due(&self, now: SystemTime) -> Vec<String> {
        self.entries.iter().filter(|(_, entry)| entry.due(now)).map(|(id, _)| id.clone()).collect()
    }

    /// The earliest time an entry falls due, for the order task's timer.
    pub(crate) fn next_due(&self) -> Option<SystemTime> {
        let timed = self.entries.values().filter(|e| e.state != State::Ordering && (e.standing || e.issued.is_some()));
        timed.filter_map(|entry| entry.next_attempt).min()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }
}

/// One certificate as `/api/certificates` shows it; times in Unix seconds.
#[derive(Serialize)]
pub(crate) struct CertificateView {
    pub(crate) names: Vec<String>,
    pub(crate) challenge: &'static str,
    pub(crate) state: State,
    pub(crate) not_after: Option<u64>,
    pub(crate) next_attempt: Option<u64>,
    pub(crate) last_error: Option<String>,
}

pub(crate) fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl From<&Entry> for CertificateView {
    fn from(entry: &Entry) -> Self {
        Self {
            names: entry.names.clone(),
            challenge: entry.challenge.as_str(),
            state: entry.state,
            not_after: entry.issued.as_ref().map(|issued| unix(issued.not_after)),
            next_attempt: entry.next_attempt.map(unix),
            last_error: entry.last_error.clone(),
        }
    }
}
