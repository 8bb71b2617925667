//! A Service's EndpointSlices (`kubernetes.io/service-name=SERVICE`), followed with kube's
//! watcher and kept as one set of addresses: what the fleet's membership and a color's pods
//! are both read from.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};

/// Server-side timeout of each watch request, as for the ConfigMap: a silently dead
/// connection is noticed within about a minute, at one watch request a minute.
const WATCH_TIMEOUT_SECS: u32 = 60;

/// The watch events of Service `service`'s EndpointSlices in `namespace`, with kube's default
/// backoff between reconnections.
pub(crate) fn watch_slices(
    client: Client,
    namespace: &str,
    service: &str,
) -> BoxStream<'static, Result<watcher::Event<EndpointSlice>, watcher::Error>> {
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let config = watcher::Config::default()
        .labels(&format!("kubernetes.io/service-name={service}"))
        .timeout(WATCH_TIMEOUT_SECS);
    watcher(api, config).default_backoff().boxed()
}

/// The slices seen so far, by name, each reduced to its addresses.
#[derive(Debug, Default)]
pub(crate) struct Slices {
    slices: BTreeMap<String, Vec<SocketAddr>>,
    /// A (re)listing in progress: it replaces `slices` only when complete.
    listing: BTreeMap<String, Vec<SocketAddr>>,
}

impl Slices {
    /// Takes in one watch event, each slice reduced by `addresses`; says whether the set of
    /// addresses may have changed (not while a listing is under way).
    pub(crate) fn apply(
        &mut self,
        event: watcher::Event<EndpointSlice>,
        addresses: impl Fn(&EndpointSlice) -> Vec<SocketAddr>,
    ) -> bool {
        let name = |slice: &EndpointSlice| slice.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => {
                self.listing.clear();
                false
            }
            watcher::Event::InitApply(slice) => {
                self.listing.insert(name(&slice), addresses(&slice));
                false
            }
            watcher::Event::InitDone => {
                self.slices = std::mem::take(&mut self.listing);
                true
            }
            watcher::Event::Apply(slice) => {
                self.slices.insert(name(&slice), addresses(&slice));
                true
            }
            watcher::Event::Delete(slice) => {
                self.slices.remove(&name(&slice));
                true
            }
        }
    }

    /// Every slice's addresses, sorted, each once.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.slices.values().flatten().copied().collect();
        addrs.sort_unstable();
        addrs.dedup();
        addrs
    }
}

/// The addresses on `port` of a slice's endpoints whose conditions pass `takes`; addresses
/// that do not parse are skipped.
pub(crate) fn addresses_on(
    slice: &EndpointSlice,
    port: u16,
    takes: impl Fn(Option<&EndpointConditions>) -> bool,
) -> Vec<SocketAddr> {
    slice
        .endpoints
        .iter()
        .filter(|e| takes(e.conditions.as_ref()))
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}
