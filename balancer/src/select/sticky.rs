//! Sticky sessions: client IP → backend for a TTL, in a bounded map whose
//! expiry takes `now`. Eviction is amortised O(1): entries are queued in
//! the order they were (re)stamped, which with one TTL is expiry order.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::backend::BackendId;

/// Client → backend with expiry.
#[derive(Debug)]
pub struct StickyMap {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<IpAddr, (BackendId, Instant)>,
    // (client, expiry it had when queued); stale ones are skipped.
    queue: VecDeque<(IpAddr, Instant)>,
}

impl StickyMap {
    /// A map keeping each client for `ttl`, at most `capacity` clients.
    #[must_use]
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// The backend this client is stuck to, if the entry has not expired.
    #[must_use]
    pub fn get(&self, client: IpAddr, now: Instant) -> Option<BackendId> {
        self.entries
            .get(&client)
            .filter(|(_, expires)| *expires > now)
            .map(|(id, _)| *id)
    }

    /// Sticks `client` to `backend` for the TTL from `now` (refreshing it).
    pub fn remember(&mut self, client: IpAddr, backend: BackendId, now: Instant) {
        let expires = now + self.ttl;
        self.entries.insert(client, (backend, expires));
        self.queue.push_back((client, expires));
        self.evict(now);
    }

    /// Forgets a client.
    pub fn forget(&mut self, client: IpAddr) {
        self.entries.remove(&client);
    }

    /// Clients remembered (expired ones may linger until the next insert).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no client is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self, now: Instant) {
        while let Some(&(client, queued_expiry)) = self.queue.front() {
            let over = self.entries.len() > self.capacity;
            let expired = queued_expiry <= now;
            let stale = self
                .entries
                .get(&client)
                .is_none_or(|(_, expires)| *expires != queued_expiry);
            if !(over || expired || stale) {
                break;
            }
            self.queue.pop_front();
            if !stale {
                self.entries.remove(&client);
            }
        }
        // Refreshes leave stale queue entries behind; rebuild when they pile up.
        if self.queue.len() > 2 * self.capacity + 16 {
            let mut live: Vec<_> = self.entries.iter().map(|(c, (_, e))| (*c, *e)).collect();
            live.sort_by_key(|(_, expires)| *expires);
            self.queue = live.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    #[test]
    fn a_client_stays_stuck_until_the_ttl_expires() {
        let now = crate::clock::now();
        let mut map = StickyMap::new(Duration::from_secs(60), 10);
        map.remember(ip(1), BackendId(7), now);
        assert_eq!(
            map.get(ip(1), now + Duration::from_secs(59)),
            Some(BackendId(7))
        );
        assert_eq!(map.get(ip(1), now + Duration::from_secs(60)), None);
    }

    #[test]
    fn remembering_again_refreshes_the_ttl() {
        let now = crate::clock::now();
        let mut map = StickyMap::new(Duration::from_secs(60), 10);
        map.remember(ip(1), BackendId(7), now);
        map.remember(ip(1), BackendId(7), now + Duration::from_secs(50));
        assert_eq!(
            map.get(ip(1), now + Duration::from_secs(100)),
            Some(BackendId(7))
        );
    }

    #[test]
    fn the_map_is_bounded_and_evicts_the_oldest_client() {
        let now = crate::clock::now();
        let mut map = StickyMap::new(Duration::from_secs(60), 3);
        for n in 0..5 {
            map.remember(
                ip(n),
                BackendId(u64::from(n)),
                now + Duration::from_secs(u64::from(n)),
            );
        }
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(ip(0), now), None);
        assert_eq!(map.get(ip(4), now), Some(BackendId(4)));
        for _ in 0..1000 {
            map.remember(ip(4), BackendId(4), now);
        }
        assert!(map.queue.len() <= 2 * 3 + 16 + 1);
    }
}
