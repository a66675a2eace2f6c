//! Who may hold the admin port's connections. The port is reachable from every pod (the
//! kubelet must reach it), so its connections are shared fairly among the addresses that hold
//! them: each address holds at most [`MAX_PER_PEER`], and when all [`MAX_CONNECTIONS`] are
//! taken, a newcomer takes the oldest connection of the address holding the most, if that
//! address holds at least two more than the newcomer would. The kubelet, which probes over a
//! connection or two, is then locked out only by as many attacking addresses as there are
//! slots, not by a few dozen pods each holding its share.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Admin connections open at once: the admin port answers probes and scrapes, and a flood of
/// idle connections to it must not take the file descriptors the data plane needs.
pub const MAX_CONNECTIONS: usize = 256;

/// Admin connections one address may hold at once. A kubelet probes over one connection at a
/// time per probe; a scraper over one.
pub const MAX_PER_PEER: usize = 8;

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address already holds [`MAX_PER_PEER`].
    PeerFull,
    /// All slots are taken, and no address holds two more than this one would.
    AllTaken,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::PeerFull => "this address already holds its share of admin connections",
            Refused::AllTaken => {
                "every admin connection is taken and no address holds more than its fair share"
            }
        }
    }
}

#[derive(Default)]
struct Held {
    total: usize,
    next_id: u64,
    /// Per address, its connections oldest first: (id, how to close it).
    by_peer: HashMap<IpAddr, Vec<(u64, Arc<Notify>)>>,
}

/// The admin port's connection slots.
pub struct Slots {
    held: Mutex<Held>,
    max_total: usize,
    max_per_peer: usize,
}

/// A connection's slot, given back when dropped. `evicted` is notified when a newcomer took
/// it: the connection must then close.
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    id: u64,
    pub evicted: Arc<Notify>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Slots {
            held: Mutex::new(Held::default()),
            max_total,
            max_per_peer,
        })
    }

    /// A slot for a new connection from `ip`, taking one from the address holding the most
    /// when all are taken and it holds at least two more than `ip` would.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.by_peer.get(&ip).map_or(0, Vec::len);
        if mine >= self.max_per_peer {
            return Err(Refused::PeerFull);
        }
        if held.total >= self.max_total {
            let most = held
                .by_peer
                .iter()
                .max_by_key(|(_, conns)| conns.len())
                .map(|(peer, conns)| (*peer, conns.len()));
            let Some((victim, theirs)) = most.filter(|(_, theirs)| *theirs >= mine + 2) else {
                return Err(Refused::AllTaken);
            };
            if let Some(conns) = held.by_peer.get_mut(&victim) {
                let (_, evict) = conns.remove(0);
                evict.notify_one();
                if conns.is_empty() {
                    held.by_peer.remove(&victim);
                }
            }
            held.total -= 1;
            tracing::debug!(%victim, held = theirs, newcomer = %ip, "admin connection taken from the address holding the most");
        }
        held.next_id += 1;
        let id = held.next_id;
        let evicted = Arc::new(Notify::new());
        held.by_peer
            .entry(ip)
            .or_default()
            .push((id, evicted.clone()));
        held.total += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
            id,
            evicted,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = held.by_peer.get_mut(&self.ip) else {
            return;
        };
        // Not there when a newcomer already took it (and counted it off).
        let Some(at) = conns.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        conns.remove(at);
        if conns.is_empty() {
            held.by_peer.remove(&self.ip);
        }
        held.total -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    #[test]
    fn an_address_holds_at_most_its_share() {
        let slots = Slots::new(10, 2);
        let _a = (slots.take(ip(1)).unwrap(), slots.take(ip(1)).unwrap());
        assert_eq!(slots.take(ip(1)).err(), Some(Refused::PeerFull));
        assert!(slots.take(ip(2)).is_ok());
    }

    #[test]
    fn a_newcomer_takes_the_oldest_slot_of_the_address_holding_the_most() {
        let slots = Slots::new(4, 4);
        let hog: Vec<_> = (0..3).map(|_| slots.take(ip(1)).unwrap()).collect();
        let _other = slots.take(ip(2)).unwrap();

        let newcomer = slots.take(ip(3)).unwrap();

        assert!(has_permit(&hog[0].evicted), "the hog's oldest is closed");
        assert!(!has_permit(&hog[1].evicted));
        drop(hog);
        drop(newcomer);
        assert_eq!(slots.held.lock().unwrap().total, 1, "counted once each");
    }

    #[test]
    fn when_every_address_holds_about_as_many_a_newcomer_is_refused() {
        let slots = Slots::new(4, 4);
        let _held: Vec<_> = [1, 1, 2, 2]
            .into_iter()
            .map(|n| slots.take(ip(n)).unwrap())
            .collect();
        let _third = slots.take(ip(3));
        // ip(3) took one of a pair; now every address holds one or two.
        assert_eq!(slots.take(ip(3)).err(), Some(Refused::AllTaken));
    }

    /// Whether `notify` holds a permit, without waiting.
    fn has_permit(notify: &Notify) -> bool {
        use std::future::Future;
        let fut = notify.notified();
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        fut.as_mut().enable();
        fut.poll(&mut cx).is_ready()
    }
}
