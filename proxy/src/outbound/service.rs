//! Calls to a Service address (a virtual destination that the node translates to a backend pod
//! per TCP connection) over pooled connections dialed *through* that address.
//!
//! Every pooled connection used for a Service address was dialed to that very address, so the
//! node chose the pod it reached, and each stream on it is delivered where the connection
//! arrived (the server half's `THROUGH_HEADER`). Nothing a peer answers can move an app
//! connection to another pod or port; a peer can only refuse.
//!
//! The client keeps a few such connections per Service — *samples* of the node's choice — and
//! balances app connections over the backends they reached:
//!
//! - a sample nobody has used yet carries the next app connection (for that one connection it
//!   is exactly the node's choice), and its answer names the backend it reached
//!   (`REACHED_HEADER`);
//! - a named backend counts as a backend of its own only once a connection dialed straight to
//!   that address has proved the same identity ([`prove`]); samples whose backend is not proved
//!   share one turn between them, so a backend that lies about its address gains at most one
//!   more backend's share, and never a connection meant for anything else;
//! - app connections take the backends (and that pile) in turn, each on the newest sample of
//!   its backend (the pile's samples take its turn in turn);
//! - while traffic flows a new sample is dialed in the background every [`SAMPLE_GAP`] at
//!   most, and a sample takes new streams for [`SAMPLE_FRESH`] after its dial: a backend added
//!   to the Service is found within moments, and one removed from it stops getting new
//!   connections within seconds. An idle Service costs nothing.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use meshlet_identity::SpiffeId;
use tracing::{debug, info};

use super::pooled_conn::{dial_pooled, Dialed, PooledConn};
use crate::dial::{ConnectError, Dialer, Upstream};

/// How long a sample takes new streams after its dial: the longest a backend removed from the
/// Service (but still running) keeps getting new connections from this client.
pub const SAMPLE_FRESH: Duration = Duration::from_secs(5);
/// Samples kept per Service (the oldest goes first): enough that a Service of a dozen backends
/// has most of them in use at any moment, and all of them within seconds.
const MAX_SAMPLES: usize = 16;
/// The shortest time between two background samples of one Service while it is young (fewer
/// than half of [`MAX_SAMPLES`]: back to back, one at a time, so that a burst of calls to a
/// Service just learned is spread at once), and once it is grown.
const SAMPLE_GAP_YOUNG: Duration = Duration::ZERO;
pub const SAMPLE_GAP: Duration = Duration::from_millis(250);
/// How long a backend proved at its own address stays proved.
const PROOF_TTL: Duration = Duration::from_secs(60);
/// Backends remembered per Service (proved or not), and proofs under way at once.
const MAX_BACKENDS: usize = 64;
const MAX_PROVING: usize = 4;
/// Services remembered before idle ones are swept.
const MAX_SERVICES: usize = 256;

/// What a sample has told about where it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reached {
    /// Not used yet: the next app connection takes it.
    Unused,
    /// Its first stream is under way.
    Asked,
    /// The backend it names (proved or not, see [`Samples::backend_of`]).
    At(SocketAddr),
    /// It named nothing usable.
    Unknown,
}

/// What the balancing needs of a pooled connection (a trait so that it can be tested without
/// one).
pub trait Conn: Clone {
    fn id(&self) -> u64;
    fn peer(&self) -> &SpiffeId;
    fn usable(&self, generation: u64) -> bool;
}

impl Conn for PooledConn {
    fn id(&self) -> u64 {
        self.id
    }
    fn peer(&self) -> &SpiffeId {
        &self.peer
    }
    fn usable(&self, generation: u64) -> bool {
        PooledConn::usable(self, generation)
    }
}

struct Sample<C> {
    conn: C,
    born: Instant,
    reached: Reached,
    uses: u64,
}

/// What a backend's own address said about it.
enum Proof {
    /// Dialed straight, it proved this identity, until then.
    Proved(SpiffeId, Instant),
    /// Dialed straight, it proved another identity or none; not asked again until then.
    Failed(Instant),
}

struct Samples<C> {
    samples: Vec<Sample<C>>,
    dialing: bool,
    last_sample: Option<Instant>,
    /// Whose turn is next among the backends.
    turn: usize,
    proofs: HashMap<SocketAddr, Proof>,
    proving: usize,
}

/// A sample to carry an app connection: `first` when it has carried none, so its answer tells
/// where it arrived (see [`Services::reached`]).
pub struct Taken<C = PooledConn> {
    pub conn: C,
    pub first: bool,
}

/// What [`Services::take`] gives.
pub enum Through {
    Sample(Taken),
    /// The backend the node chose declines pooled connections: it answered with a connection
    /// of its own, dialed through the Service address like any other.
    Own(Upstream, SpiffeId),
}

impl<C> Default for Samples<C> {
    fn default() -> Self {
        Samples {
            samples: Vec::new(),
            dialing: false,
            last_sample: None,
            turn: 0,
            proofs: HashMap::new(),
            proving: 0,
        }
    }
}

impl<C: Conn> Samples<C> {
    fn prune(&mut self, now: Instant, generation: u64) {
        self.samples
            .retain(|s| s.conn.usable(generation) && now < s.born + SAMPLE_FRESH);
        if self.proofs.len() > MAX_BACKENDS {
            self.proofs.retain(|_, p| match p {
                Proof::Proved(_, until) | Proof::Failed(until) => *until > now,
            });
        }
    }

    /// The backend `sample` counts for: its named address once proved with its identity,
    /// otherwise the one pile (`None`) of everything unproved.
    fn backend_of(&self, sample: &Sample<C>, now: Instant) -> Option<SocketAddr> {
        let Reached::At(addr) = sample.reached else {
            return None;
        };
        match self.proofs.get(&addr) {
            Some(Proof::Proved(id, until)) if *until > now && id == sample.conn.peer() => {
                Some(addr)
            }
            _ => None,
        }
    }

    fn pick(&mut self, now: Instant) -> Option<Taken<C>> {
        if let Some(s) = self
            .samples
            .iter_mut()
            .find(|s| s.reached == Reached::Unused)
        {
            s.reached = Reached::Asked;
            s.uses += 1;
            return Some(Taken {
                conn: s.conn.clone(),
                first: true,
            });
        }
        let settled = |s: &Sample<C>| s.reached != Reached::Asked;
        let backends: BTreeSet<Option<SocketAddr>> = self
            .samples
            .iter()
            .filter(|s| settled(s))
            .map(|s| self.backend_of(s, now))
            .collect();
        let chosen = if backends.is_empty() {
            // Only samples whose first answer is still to come: the newest will do.
            self.samples.len().checked_sub(1)
        } else {
            let backend = backends
                .iter()
                .nth(self.turn % backends.len())
                .copied()
                .flatten();
            self.turn = self.turn.wrapping_add(1);
            let of_backend = self
                .samples
                .iter()
                .enumerate()
                .filter(|(_, s)| settled(s) && self.backend_of(s, now) == backend);
            match backend {
                // One backend's samples all reach the same pod: its newest carries its app
                // connections, so they share one connection's writes (batched) rather than
                // spread thin over all of them; the older ones drain.
                Some(_) => of_backend.max_by_key(|(_, s)| s.born),
                // The pile of unproved samples may reach different pods: they take their one
                // turn in turn.
                None => of_backend.min_by_key(|(_, s)| s.uses),
            }
            .map(|(i, _)| i)
        }?;
        let s = &mut self.samples[chosen];
        s.uses += 1;
        Some(Taken {
            conn: s.conn.clone(),
            first: false,
        })
    }

    /// Whether a background sample is due: none under way, and the last one long enough ago.
    fn sample_due(&mut self, now: Instant) -> bool {
        let gap = if self.samples.len() < MAX_SAMPLES / 2 {
            SAMPLE_GAP_YOUNG
        } else {
            SAMPLE_GAP
        };
        if self.dialing || self.last_sample.is_some_and(|t| now < t + gap) {
            return false;
        }
        self.dialing = true;
        self.last_sample = Some(now);
        true
    }

    fn add(&mut self, conn: C, reached: Reached, uses: u64) {
        if self.samples.len() >= MAX_SAMPLES {
            if let Some(oldest) = self
                .samples
                .iter()
                .enumerate()
                .filter(|(_, s)| s.reached != Reached::Asked)
                .min_by_key(|(_, s)| s.born)
                .map(|(i, _)| i)
            {
                self.samples.swap_remove(oldest);
            }
        }
        self.samples.push(Sample {
            conn,
            born: Instant::now(),
            reached,
            uses,
        });
    }
}

/// The samples of every Service address this proxy calls.
pub struct Services {
    dialer: Arc<Dialer>,
    sets: Mutex<HashMap<SocketAddr, Arc<Mutex<Samples<PooledConn>>>>>,
}

fn lock<C>(set: &Mutex<Samples<C>>) -> MutexGuard<'_, Samples<C>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

impl Services {
    pub fn new(dialer: Arc<Dialer>) -> Self {
        Services {
            dialer,
            sets: Mutex::default(),
        }
    }

    fn set(&self, dst: SocketAddr) -> Arc<Mutex<Samples<PooledConn>>> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if sets.len() >= MAX_SERVICES && !sets.contains_key(&dst) {
            sets.retain(|_, set| !lock(set).samples.is_empty());
            if sets.len() >= MAX_SERVICES {
                sets.clear();
            }
        }
        sets.entry(dst).or_default().clone()
    }

    /// Files `conn`, dialed to `dst` and found to have reached a pod that `dst` is not an
    /// address of, as the first sample of the Service `dst`.
    pub fn adopt(&self, dst: SocketAddr, conn: PooledConn) {
        lock(&self.set(dst)).add(conn, Reached::Unused, 0);
    }

    /// Forgets the sample `id` of `dst` (closed, refused, or broken under us).
    pub fn drop_sample(&self, dst: SocketAddr, id: u64) {
        lock(&self.set(dst)).samples.retain(|s| s.conn.id != id);
    }

    /// Forgets every sample of `dst` (its backends cannot take through streams).
    pub fn forget(&self, dst: SocketAddr) {
        lock(&self.set(dst)).samples.clear();
    }

    /// A pooled connection dialed through `dst` to carry the next app connection, dialed here
    /// when there is none; starts a background sample when one is due.
    pub async fn take(
        &self,
        dst: SocketAddr,
        handshake_timeout: Duration,
    ) -> Result<Through, ConnectError> {
        let set = self.set(dst);
        let generation = self.dialer.store.generation();
        let now = Instant::now();
        let taken = {
            let mut samples = lock(&set);
            samples.prune(now, generation);
            let taken = samples.pick(now);
            if taken.is_some() && samples.sample_due(now) {
                let (dialer, set) = (self.dialer.clone(), set.clone());
                tokio::spawn(async move {
                    let dialed = Box::pin(dial_pooled(
                        &dialer,
                        dst,
                        handshake_timeout,
                        generation,
                        None,
                    ))
                    .await;
                    let mut samples = lock(&set);
                    samples.dialing = false;
                    match dialed {
                        Ok(Dialed::Pooled(conn)) => samples.add(conn, Reached::Unused, 0),
                        Ok(Dialed::Own(..)) => {}
                        Err(e) => {
                            debug!(%dst, error = %e, "a background sample of a Service failed")
                        }
                    }
                });
            }
            taken
        };
        if let Some(taken) = taken {
            return Ok(Through::Sample(taken));
        }
        // Boxed: dialing is rare and its state large (see `Pool::pooled`).
        match Box::pin(dial_pooled(
            &self.dialer,
            dst,
            handshake_timeout,
            generation,
            None,
        ))
        .await?
        {
            Dialed::Pooled(conn) => {
                let mut samples = lock(&set);
                samples.last_sample = Some(Instant::now());
                samples.add(conn.clone(), Reached::Asked, 1);
                Ok(Through::Sample(Taken { conn, first: true }))
            }
            Dialed::Own(upstream, peer) => Ok(Through::Own(upstream, peer)),
        }
    }

    /// The first answer on sample `id` of `dst` named `reached` as where it arrived: files it
    /// under that backend, and has the backend's own address prove its identity if it has not.
    pub fn reached(
        &self,
        dst: SocketAddr,
        conn: &PooledConn,
        reached: Option<SocketAddr>,
        handshake_timeout: Duration,
    ) {
        let set = self.set(dst);
        let mut samples = lock(&set);
        let named = reached.filter(|r| plausible(dst, *r));
        if let Some(s) = samples.samples.iter_mut().find(|s| s.conn.id == conn.id) {
            s.reached = named.map_or(Reached::Unknown, Reached::At);
        }
        let Some(addr) = named else { return };
        let now = Instant::now();
        let known = match samples.proofs.get(&addr) {
            Some(Proof::Proved(_, until) | Proof::Failed(until)) => *until > now,
            None => false,
        };
        if known || samples.proving >= MAX_PROVING || samples.proofs.len() >= MAX_BACKENDS * 2 {
            return;
        }
        samples.proving += 1;
        let (dialer, set2, peer) = (self.dialer.clone(), set.clone(), conn.peer.clone());
        drop(samples);
        tokio::spawn(async move {
            let proof = prove(&dialer, dst, addr, &peer, handshake_timeout).await;
            let mut samples = lock(&set2);
            samples.proving = samples.proving.saturating_sub(1);
            samples.proofs.insert(addr, proof);
        });
    }
}

/// A backend address worth proving: a unicast address of the Service's family that is not the
/// Service address itself.
fn plausible(dst: SocketAddr, reached: SocketAddr) -> bool {
    let ip = reached.ip();
    reached != dst
        && reached.port() != 0
        && ip.is_ipv4() == dst.is_ipv4()
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
}

/// Dials `addr` straight (not through the Service) and compares the identity there with the
/// one the sample proved: a backend that names its own address passes, one that names another
/// pod (or nothing) does not.
async fn prove(
    dialer: &Dialer,
    dst: SocketAddr,
    addr: SocketAddr,
    expected: &SpiffeId,
    handshake_timeout: Duration,
) -> Proof {
    let now = Instant::now();
    // The pooled ALPN: the peer waits for streams, and no app connection is opened for this.
    let dialed =
        Box::pin(dialer.connect_tls(addr, dialer.tls.client_mux.clone(), handshake_timeout, None))
            .await;
    match dialed {
        Ok(conn) if conn.peer == *expected => {
            info!(service = %dst, backend = %addr, peer = %conn.peer, "Service backend proved at its own address");
            Proof::Proved(conn.peer, now + PROOF_TTL)
        }
        Ok(conn) => {
            info!(service = %dst, named = %addr, claimed = %expected, found = %conn.peer, "a Service backend named an address whose pod has another identity: its samples stay unproved");
            Proof::Failed(now + PROOF_TTL)
        }
        Err(e) => {
            debug!(service = %dst, named = %addr, error = %e, "a Service backend's own address could not be dialed: its samples stay unproved");
            Proof::Failed(now + PROOF_TTL)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Fake {
        id: u64,
        peer: SpiffeId,
    }

    impl Conn for Fake {
        fn id(&self) -> u64 {
            self.id
        }
        fn peer(&self) -> &SpiffeId {
            &self.peer
        }
        fn usable(&self, _: u64) -> bool {
            true
        }
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local{path}")).unwrap()
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], 8080))
    }

    const ECHO: &str = "/ns/default/sa/echo";

    /// Samples already asked, `n` per (identity, address named), each backend proved or not.
    fn samples(backends: &[(&str, SocketAddr, usize, bool)]) -> Samples<Fake> {
        let mut s = Samples::default();
        let mut next = 0;
        let until = Instant::now() + PROOF_TTL;
        for &(peer, named, n, proved) in backends {
            for _ in 0..n {
                next += 1;
                let conn = Fake {
                    id: next,
                    peer: id(peer),
                };
                s.add(conn, Reached::At(named), 0);
            }
            if proved {
                s.proofs.insert(named, Proof::Proved(id(peer), until));
            }
        }
        s
    }

    /// How many of `calls` picks each sample id got.
    fn picks(s: &mut Samples<Fake>, calls: usize) -> HashMap<u64, usize> {
        let mut got = HashMap::new();
        for _ in 0..calls {
            let taken = s.pick(Instant::now()).unwrap();
            *got.entry(taken.conn.id).or_default() += 1;
        }
        got
    }

    fn share(got: &HashMap<u64, usize>, ids: std::ops::RangeInclusive<u64>) -> usize {
        ids.map(|i| got.get(&i).copied().unwrap_or(0)).sum()
    }

    #[test]
    fn an_unused_sample_carries_the_next_connection_and_is_asked_where_it_arrived() {
        let mut s = samples(&[(ECHO, addr(21), 1, true)]);
        s.add(
            Fake {
                id: 9,
                peer: id(ECHO),
            },
            Reached::Unused,
            0,
        );

        let taken = s.pick(Instant::now()).unwrap();

        assert_eq!(taken.conn.id, 9);
        assert!(taken.first);
        assert!(!s.pick(Instant::now()).unwrap().first);
    }

    #[test]
    fn proved_backends_share_calls_equally_whatever_their_number_of_samples() {
        let mut s = samples(&[(ECHO, addr(21), 5, true), (ECHO, addr(22), 1, true)]);

        let got = picks(&mut s, 60);

        assert_eq!(share(&got, 1..=5), 30);
        assert_eq!(share(&got, 6..=6), 30);
    }

    #[test]
    fn a_proved_backends_calls_ride_its_newest_sample() {
        let mut s = samples(&[(ECHO, addr(21), 3, true)]);
        // Born in order: the last one added is the newest.
        std::thread::sleep(Duration::from_millis(2));
        s.add(
            Fake {
                id: 4,
                peer: id(ECHO),
            },
            Reached::At(addr(21)),
            0,
        );

        let got = picks(&mut s, 10);

        assert_eq!(got.get(&4), Some(&10), "{got:?}");
    }

    #[test]
    fn a_backend_naming_another_pods_address_gets_at_most_one_share_more() {
        // Two honest backends, proved; a liar of another identity holds many samples, each
        // naming echo's address or addresses nobody proved.
        let mut s = samples(&[
            (ECHO, addr(21), 1, true),
            (ECHO, addr(22), 1, true),
            ("/ns/default/sa/evil", addr(21), 4, false),
        ]);
        for last in 30..40 {
            s.add(
                Fake {
                    id: 100 + u64::from(last),
                    peer: id("/ns/default/sa/evil"),
                },
                Reached::At(addr(last)),
                0,
            );
        }

        let got = picks(&mut s, 90);

        assert_eq!(share(&got, 1..=1), 30, "{got:?}");
        assert_eq!(share(&got, 2..=2), 30, "{got:?}");
        let liar: usize = got.iter().filter(|(i, _)| **i > 2).map(|(_, n)| n).sum();
        assert_eq!(liar, 30, "the liar's samples share one turn: {got:?}");
    }

    #[test]
    fn a_sample_takes_no_new_connection_once_it_is_older_than_the_freshness_window() {
        let mut s = samples(&[(ECHO, addr(21), 2, true)]);

        s.prune(Instant::now() + SAMPLE_FRESH, 0);

        assert!(s.pick(Instant::now()).is_none());
    }

    #[test]
    fn samples_are_bounded_and_the_oldest_goes_first() {
        let mut s = samples(&[(ECHO, addr(21), MAX_SAMPLES, true)]);

        s.add(
            Fake {
                id: 1000,
                peer: id(ECHO),
            },
            Reached::Unused,
            0,
        );

        assert_eq!(s.samples.len(), MAX_SAMPLES);
        assert!(s.samples.iter().any(|x| x.conn.id == 1000));
        assert!(s.samples.iter().all(|x| x.conn.id != 1));
    }

    #[test]
    fn a_named_address_is_proved_only_if_it_could_be_a_backend_of_the_service() {
        let svc = SocketAddr::from(([198, 18, 9, 10], 80));

        assert!(plausible(svc, addr(21)));
        assert!(!plausible(svc, svc));
        assert!(!plausible(svc, SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert!(!plausible(svc, SocketAddr::from(([198, 18, 0, 21], 0))));
        assert!(!plausible(svc, "[2001:2::21]:8080".parse().unwrap()));
    }
}
