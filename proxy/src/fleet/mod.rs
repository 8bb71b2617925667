//! With `--fleet`, the replicas judge as one: every replica serves its [`evidence`]; the one
//! holding the judge's Lease gathers it from all members about once a second ([`gather`]) and
//! runs the sequential test on the fleet's sum ([`verdict`]). Every replica keeps the streak
//! rule locally; none runs the rate test on its own share, which would multiply false
//! rollbacks by the number of replicas. The judge runs the step plan on the same sum (its
//! moves go into the ConfigMap, which the other replicas follow).
//!
//! Membership and the Lease come from the Kubernetes side (the `controller` crate) as watch
//! channels, so this module needs no API client and tests can drive it directly.

pub mod evidence;
pub mod gather;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use crate::fleet::verdict::Judgement;

/// How long a non-judge may go without the judge asking for its evidence before it counts
/// itself cut off from its peers.
pub const PEER_SILENCE_MS: u64 = 5_000;

/// What the Kubernetes side tells the judging loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// The members' admin addresses.
    pub members: Vec<SocketAddr>,
    /// Whether this replica holds the judge's Lease.
    pub leading: bool,
    /// Whether the membership watch and the Lease reach the API server.
    pub api_connected: bool,
}

/// The fleet as this replica knows it, for `/status`.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The peers' admin addresses, from the Service's EndpointSlices (this replica's included).
    pub members: Vec<SocketAddr>,
    /// The judge's identity, as the judge names itself when it gathers (or this replica's).
    pub judge: Option<String>,
    /// Whether this replica holds the Lease.
    pub is_judge: bool,
    /// Whether the membership watch and the Lease reach the API server.
    pub api_connected: bool,
    /// The last gather's result, on the judge.
    pub judgement: Option<Judgement>,
    /// Members that answered the last gather, on the judge.
    pub answered: usize,
}

/// One replica's part in the fleet.
pub struct Fleet {
    /// The headless Service, as `NAMESPACE/SERVICE`.
    pub service: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// What it knows, updated by the membership, the Lease and the gathers.
    view: Mutex<View>,
    /// When (on the runtime's clock) the judge last asked for this replica's evidence.
    last_asked_ms: AtomicU64,
}

impl Fleet {
    /// This replica's part in the fleet behind `service`, under `identity`.
    pub fn new(service: String, identity: String) -> Fleet {
        Fleet {
            service,
            identity,
            view: Mutex::new(View::default()),
            last_asked_ms: AtomicU64::new(0),
        }
    }

    /// What this replica knows of the fleet.
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that the judge `judge` (if it named itself) asked for the evidence at `now_ms`.
    pub fn asked(&self, judge: Option<&str>, now_ms: u64) {
        self.last_asked_ms.store(now_ms, Relaxed);
        if let Some(judge) = judge {
            let mut view = self.view();
            if !view.is_judge {
                view.judge = Some(judge.to_owned());
            }
        }
    }

    /// Whether this replica is cut off: from the API server, or from its peers (the judge
    /// reached none of them; a non-judge has not been asked for its evidence lately).
    pub fn isolated(&self, now_ms: u64) -> Option<&'static str> {
        let view = self.view();
        if !view.api_connected {
            return Some("cut off from the API server");
        }
        let alone = view.members.len() <= 1;
        let peers = if view.is_judge {
            alone || view.answered > 1
        } else {
            alone || now_ms.saturating_sub(self.last_asked_ms.load(Relaxed)) < PEER_SILENCE_MS
        };
        (!peers).then_some("cut off from its peers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_off_from_the_api_or_the_peers() {
        let fleet = Fleet::new("ns/peers".into(), "me".into());
        let two: Vec<SocketAddr> = vec![([127, 0, 0, 1], 1).into(), ([127, 0, 0, 2], 1).into()];
        assert_eq!(fleet.isolated(0), Some("cut off from the API server"));
        {
            let mut view = fleet.view();
            view.api_connected = true;
            view.members = two;
        }
        // A member that the judge asks, then stops asking.
        fleet.asked(Some("judge"), 1_000);
        assert_eq!(fleet.isolated(1_000 + PEER_SILENCE_MS - 1), None);
        assert_eq!(
            fleet.isolated(1_000 + PEER_SILENCE_MS),
            Some("cut off from its peers")
        );
        assert_eq!(fleet.view().judge.as_deref(), Some("judge"));
        // A judge that reached only itself.
        {
            let mut view = fleet.view();
            view.is_judge = true;
            view.answered = 1;
        }
        assert_eq!(fleet.isolated(0), Some("cut off from its peers"));
        fleet.view().answered = 2;
        assert_eq!(fleet.isolated(0), None);
        // Alone in the fleet is not cut off.
        fleet.view().members.truncate(1);
        fleet.view().answered = 1;
        assert_eq!(fleet.isolated(0), None);
    }
}
