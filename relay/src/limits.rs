//! Caps on concurrent visitors, so one tunnel or one source address cannot take every
//! stream slot, file descriptor or byte of memory the relay has.

use burrow_common::sync;
use std::{
    collections::HashMap,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    Shared,
    metrics::{Metrics, REFUSED_IP_LIMIT, REFUSED_RELAY_LIMIT, Reason},
};

/// A source address as every per-address cap counts it: an IPv4 address, or the /64 of an
/// IPv6 one, since a single host is commonly given a whole /64 and could otherwise take a
/// new address for every connection.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct IpKey(IpAddr);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpKey(IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1)))),
            v4 => IpKey(v4),
        }
    }
}

/// Which cap a newcomer met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Address,
    Total,
}

/// Holders counted per key and in total, under one lock so both caps see the same count.
struct Keyed<K> {
    counts: Arc<Mutex<Counts<K>>>,
}

struct Counts<K> {
    by_key: HashMap<K, usize>,
    total: usize,
}

/// One holder's place in a [`Keyed`] count; dropping it frees the place, and a key with no
/// holder left is forgotten.
pub(crate) struct Slot<K: Hash + Eq> {
    key: K,
    counts: Arc<Mutex<Counts<K>>>,
}

impl<K: Hash + Eq + Copy> Keyed<K> {
    fn new() -> Self {
        Self { counts: Arc::new(Mutex::new(Counts { by_key: HashMap::new(), total: 0 })) }
    }

    fn try_take(&self, key: K, per_key: usize, total: usize) -> Result<Slot<K>, Full> {
        let mut counts = sync::lock(&self.counts);
        if counts.total >= total {
            return Err(Full::Total);
        }
        let count = counts.by_key.entry(key).or_default();
        if *count >= per_key {
            if *count == 0 {
                counts.by_key.remove(&key);
            }
            return Err(Full::Address);
        }
        *count += 1;
        counts.total += 1;
        Ok(Slot { key, counts: self.counts.clone() })
    }

    fn total(&self) -> usize {
        sync::lock(&self.counts).total
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = sync::lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.by_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.by_key.remove(&self.key);
            }
        }
    }
}

/// Open visitors per source address, across all tunnels.
pub(crate) struct PerIpLimit {
    /// Changed by a config reload; slots taken already are kept.
    max: AtomicUsize,
    open: Keyed<IpKey>,
}

/// One connection's place under the per-address cap, and its descriptor under the relay's,
/// if it took one; dropping it frees both.
pub(crate) struct IpSlot {
    _address: Slot<IpKey>,
    _descriptor: Option<OwnedSemaphorePermit>,
}

impl PerIpLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self { max: AtomicUsize::new(max), open: Keyed::new() }
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub(crate) fn try_admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let address = self.open.try_take(IpKey::from(ip), self.max.load(Ordering::Relaxed), usize::MAX).ok()?;
        Some(IpSlot { _address: address, _descriptor: None })
    }
}

/// Visitors' connections and public ports the relay may hold at once: each is an open file,
/// and at the open files limit `accept` fails and so does reading the token store, which
/// would turn agents away as if their tokens were wrong. Refusing visitors past this cap
/// keeps [`RESERVED_FDS`] for the relay's own work.
pub(crate) struct Descriptors {
    open: Arc<Semaphore>,
    max: usize,
    /// The open files limit the cap was derived from, if the system has one.
    open_files: Option<u64>,
}

/// Open files kept for the relay itself: its sockets, its store and certificate files,
/// logs, and the admin endpoint's connections.
pub(crate) const RESERVED_FDS: u64 = 128;

impl Descriptors {
    /// Raises the open files limit to its hard limit, and caps visitors below it;
    /// `configured`, when set, is lowered to that cap with a warning.
    pub(crate) fn for_this_process(configured: Option<usize>) -> Self {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
        let open_files = match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit.maximum,
            Err(e) => {
                tracing::warn!("cannot raise the open files limit to its hard limit: {e}");
                limit.current
            }
        };
        let cap = open_files.map(|n| usize::try_from(n.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX));
        let max = match (configured, cap) {
            (Some(wanted), Some(cap)) if wanted > cap => {
                tracing::warn!(wanted, cap, "max_visitors lowered to what the open files limit allows");
                cap
            }
            (Some(wanted), _) => wanted,
            (None, cap) => cap.unwrap_or(Semaphore::MAX_PERMITS),
        };
        Self::new(max, open_files)
    }

    pub(crate) fn new(max: usize, open_files: Option<u64>) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self { open: Arc::new(Semaphore::new(max)), max, open_files }
    }

    /// A descriptor for one more connection or listener, unless the relay holds its cap.
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn open_files(&self) -> Option<u64> {
        self.open_files
    }
}

/// Admits a visitor's connection before its tunnel is known (an HTTP visitor): its place
/// under the per-address cap and its descriptor.
pub(crate) fn admit_connection(per_ip: &PerIpLimit, descriptors: &Descriptors, ip: IpAddr) -> Result<IpSlot, Reason> {
    let descriptor = descriptors.try_take().ok_or(REFUSED_RELAY_LIMIT)?;
    let slot = per_ip.try_admit(ip).ok_or(REFUSED_IP_LIMIT)?;
    Ok(IpSlot { _descriptor: Some(descriptor), ..slot })
}

/// QUIC clients that have not authenticated yet: in their handshake, or connected without a
/// Hello answered. Each costs the relay buffers until then ([`transport::SESSION_BUDGET_PRE_AUTH`]),
/// so how many may wait is capped per address and in total; the count also tells a flood
/// from ordinary arrivals.
///
/// [`transport::SESSION_BUDGET_PRE_AUTH`]: burrow_common::transport::SESSION_BUDGET_PRE_AUTH
pub(crate) struct Unauthenticated(Keyed<IpKey>);

/// One client's place among the unauthenticated, from its first packet until its Hello is
/// answered (a delayed refusal included).
pub(crate) type Pending = Slot<IpKey>;

impl Default for Unauthenticated {
    fn default() -> Self {
        Self(Keyed::new())
    }
}

impl Unauthenticated {
    pub(crate) fn in_progress(&self) -> usize {
        self.0.total()
    }

    /// A place for a client from `ip`, unless `per_address` from its address, or `total` in
    /// all, are waiting already.
    pub(crate) fn try_enter(&self, ip: IpAddr, per_address: usize, total: usize) -> Result<Pending, Full> {
        self.0.try_take(IpKey::from(ip), per_address, total)
    }
}

/// What a visitor holds while it is served: its place under both caps, and its count in
/// the open-visitors gauge.
pub(crate) struct Admission {
    _tunnel: OwnedSemaphorePermit,
    /// None for an HTTP visitor, whose connection holds its address slot.
    _ip: Option<IpSlot>,
    metrics: Arc<Metrics>,
}

/// A tunnel's cap on visitors, and the reason given to those past it.
pub(crate) struct Places {
    pub(crate) open: Arc<Semaphore>,
    pub(crate) when_full: Reason,
}

impl Places {
    pub(crate) fn new(max: usize, when_full: Reason) -> Self {
        Self { open: Arc::new(Semaphore::new(max)), when_full }
    }
}

/// Admits a visitor of a tunnel with `places`, or says which cap is full.
pub(crate) fn admit(places: &Places, shared: &Shared, ip: IpAddr) -> Result<Admission, Reason> {
    let tunnel = places.open.clone().try_acquire_owned().map_err(|_| places.when_full.clone())?;
    let ip = admit_connection(&shared.per_ip, &shared.descriptors, ip)?;
    let metrics = &shared.metrics;
    metrics.visitors_total.inc();
    metrics.visitors.inc();
    Ok(Admission { _tunnel: tunnel, _ip: Some(ip), metrics: metrics.clone() })
}

/// Admits an HTTP visitor's connection to a tunnel, once a request has named it; the
/// connection took its address slot when it was accepted, before its tunnel was known.
pub(crate) fn admit_to_tunnel(places: &Places, metrics: &Arc<Metrics>) -> Result<Admission, Reason> {
    let tunnel = places.open.clone().try_acquire_owned().map_err(|_| places.when_full.clone())?;
    metrics.visitors_total.inc();
    metrics.visitors.inc();
    Ok(Admission { _tunnel: tunnel, _ip: None, metrics: metrics.clone() })
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.visitors.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_freed_on_drop() {
        let limit = PerIpLimit::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = limit.try_admit(a).unwrap();
        let _second = limit.try_admit(a).unwrap();
        assert!(limit.try_admit(a).is_none());
        assert!(limit.try_admit(b).is_some(), "other addresses are not affected");
        drop(first);
        assert!(limit.try_admit(a).is_some());
    }

    #[test]
    fn map_forgets_addresses_with_no_visitors() {
        let limit = PerIpLimit::new(1);
        drop(limit.try_admit("192.0.2.9".parse().unwrap()));
        assert!(limit.open.counts.lock().unwrap().by_key.is_empty());
    }

    #[test]
    fn v6_addresses_count_by_their_64_and_mapped_v4_as_v4() {
        let limit = PerIpLimit::new(1);
        let _first = limit.try_admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(limit.try_admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_none(), "same /64");
        assert!(limit.try_admit("2001:db8:1:3::1".parse().unwrap()).is_some(), "another /64");
        let _v4 = limit.try_admit("192.0.2.7".parse().unwrap()).unwrap();
        assert!(limit.try_admit("::ffff:192.0.2.7".parse().unwrap()).is_none(), "the same v4 address");
    }

    #[test]
    fn unauthenticated_clients_are_capped_per_address_then_in_total() {
        let waiting = Unauthenticated::default();
        let ip = |last: u8| IpAddr::from([192, 0, 2, last]);
        let first = waiting.try_enter(ip(1), 2, 3).unwrap();
        let _second = waiting.try_enter(ip(1), 2, 3).unwrap();
        assert_eq!(waiting.try_enter(ip(1), 2, 3).err(), Some(Full::Address));
        let _third = waiting.try_enter(ip(2), 2, 3).unwrap();
        assert_eq!(waiting.try_enter(ip(3), 2, 3).err(), Some(Full::Total));
        assert_eq!(waiting.in_progress(), 3);
        drop(first);
        assert!(waiting.try_enter(ip(1), 2, 3).is_ok());
    }
}
