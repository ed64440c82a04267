//! Caps on concurrent visitors, so one tunnel or one source address cannot take every
//! stream slot, file descriptor or byte of memory the relay has.

use burrow_common::sync;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, REFUSED_IP_LIMIT, Reason};

/// Open visitors per source address, across all tunnels.
pub(crate) struct PerIpLimit {
    /// Changed by a config reload; slots taken already are kept.
    max: AtomicUsize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One visitor's place under the per-address cap; dropping it frees the place.
pub(crate) struct IpSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self { max: AtomicUsize::new(max), open: Arc::default() }
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub(crate) fn try_admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut open = sync::lock(&self.open);
        let count = open.entry(ip).or_default();
        if *count >= self.max.load(Ordering::Relaxed) {
            return None;
        }
        *count += 1;
        Some(IpSlot { ip, open: self.open.clone() })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = sync::lock(&self.open);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Agent handshakes in progress, to tell a flood from ordinary arrivals.
#[derive(Default)]
pub(crate) struct Handshakes(Arc<AtomicUsize>);

/// Counts one handshake until dropped.
pub(crate) struct Handshaking(Arc<AtomicUsize>);

impl Handshakes {
    pub(crate) fn in_progress(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn enter(&self) -> Handshaking {
        self.0.fetch_add(1, Ordering::Relaxed);
        Handshaking(self.0.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
pub(crate) fn admit(
    places: &Places,
    per_ip: &PerIpLimit,
    ip: IpAddr,
    metrics: &Arc<Metrics>,
) -> Result<Admission, Reason> {
    let tunnel = places.open.clone().try_acquire_owned().map_err(|_| places.when_full.clone())?;
    let ip = per_ip.try_admit(ip).ok_or(REFUSED_IP_LIMIT)?;
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
        assert!(limit.open.lock().unwrap().is_empty());
    }
}
