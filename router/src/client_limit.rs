//! The bound on open connections per client address on the traffic port, so one client cannot
//! hold every connection a router can serve. The acceptor asks [`ClientLimit::admit`] for each
//! accepted connection; the [`ClientSlot`] it gets goes with the connection and gives its place
//! back when dropped, whichever way the connection ends.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// Open connections by client address, against a bound.
#[derive(Debug)]
pub struct ClientLimit {
    /// 0: no bound.
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ClientSlot {
    limit: Option<Arc<ClientLimit>>,
    ip: IpAddr,
}

impl ClientLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or `None` when it has `max` open already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        if self.max == 0 {
            return Some(ClientSlot { limit: None, ip });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            limit: Some(self.clone()),
            ip,
        })
    }

    /// Open connections from `ip` (admitted and not yet dropped).
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some(limit) = &self.limit else {
            return;
        };
        let mut open = limit.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            // No entry for an address without connections: the map holds only open clients.
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn an_address_gets_max_places_and_one_more_once_one_is_dropped() {
        let limit = ClientLimit::new(2);
        let first = limit.admit(A).expect("first");
        let _second = limit.admit(A).expect("second");
        assert!(limit.admit(A).is_none(), "a third from the same address");
        assert!(
            limit.admit(B).is_some(),
            "another address has its own places"
        );
        drop(first);
        assert_eq!(limit.open(A), 1);
        assert!(limit.admit(A).is_some());
    }

    #[test]
    fn addresses_without_connections_are_forgotten() {
        let limit = ClientLimit::new(1);
        drop(limit.admit(A));
        assert!(limit.open.lock().unwrap().is_empty());
    }

    #[test]
    fn zero_means_no_bound() {
        let limit = ClientLimit::new(0);
        let slots: Vec<_> = (0..1000)
            .map(|_| limit.admit(A).expect("admitted"))
            .collect();
        assert_eq!(slots.len(), 1000);
        assert_eq!(limit.open(A), 0, "nothing is counted without a bound");
    }
}
