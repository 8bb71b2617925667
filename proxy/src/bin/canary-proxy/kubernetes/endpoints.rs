//! Service upstreams (`svc:NAME.NAMESPACE:PORT`): each Service the configuration names is
//! followed (the `canary-controller` crate's EndpointSlice watch) and its endpoints handed to
//! the colors that use it, as soon as they change and whenever a new configuration brings new
//! endpoint sets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use canary_controller::Client;
use canary_controller::endpoints::{ServiceEndpoints, follow_service};
use canary_proxy::config::{Color, ServiceRef, UpstreamAddr, Upstreams};
use canary_proxy::runtime::Runtime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How often the applied configuration is looked at for Services to follow or drop, and for
/// new endpoint sets to feed: a configuration that names a Service anew (or speaks to it
/// otherwise) has no endpoints for up to this long once its pods are known.
const LOOK: Duration = Duration::from_millis(50);

/// One Service followed.
struct Followed {
    /// Its endpoints as last seen.
    endpoints: watch::Receiver<ServiceEndpoints>,
    /// Bumped on each change seen, so that each color is fed each change once.
    generation: u64,
    /// The watch, and the task that wakes the loop on its changes.
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Followed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Follows the Services the applied configuration names, with `client` (or one made on first
/// need, for `--config`), until `stop` turns true.
pub fn start(
    runtime: Arc<Runtime>,
    client: Option<Client>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(runtime, client, stop))
}

async fn run(runtime: Arc<Runtime>, mut client: Option<Client>, mut stop: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let mut followed: HashMap<ServiceRef, Followed> = HashMap::new();
    // Per color: the endpoint set (by address) and generation last fed.
    let mut fed: [Option<(usize, u64)>; 2] = [None; 2];
    let mut unreachable = false;
    loop {
        let table = runtime.routes().clone();
        let wanted: Vec<(Color, ServiceRef)> = table
            .iter()
            .flat_map(|t| {
                Color::ALL
                    .into_iter()
                    .filter_map(|c| match t.config.upstream(c) {
                        Upstreams::Service(s) => Some((c, s.clone())),
                        Upstreams::Static(_) => None,
                    })
            })
            .collect();
        followed.retain(|s, _| wanted.iter().any(|(_, w)| w == s));
        for (_, service) in &wanted {
            if followed.contains_key(service) {
                continue;
            }
            if client.is_none() {
                match canary_controller::connect().await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        if !unreachable {
                            warn!(error = %e, "cannot reach the Kubernetes API to follow the Services of the upstreams; retrying");
                        }
                        unreachable = true;
                        continue;
                    }
                }
            }
            let Some(client) = client.clone() else {
                continue;
            };
            info!(%service, "following the Service's endpoints");
            followed.insert(service.clone(), follow(client, service, &changed));
        }
        for f in followed.values_mut() {
            if f.endpoints.has_changed().unwrap_or(false) {
                f.endpoints.borrow_and_update();
                f.generation += 1;
            }
        }
        if let Some(table) = &table {
            for (color, service) in &wanted {
                let Some(f) = followed.get(service) else {
                    continue;
                };
                let set = &table.upstreams[color.index()];
                let key = (Arc::as_ptr(set) as usize, f.generation);
                let seen = f.endpoints.borrow();
                if seen.synced && fed[color.index()] != Some(key) {
                    let addrs: Vec<UpstreamAddr> = seen
                        .addrs
                        .iter()
                        .map(|a| UpstreamAddr {
                            authority: a.to_string().parse().expect("a socket address"),
                        })
                        .collect();
                    set.update(&addrs);
                    fed[color.index()] = Some(key);
                }
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(LOOK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn follow(client: Client, service: &ServiceRef, changed: &Arc<Notify>) -> Followed {
    let (tx, rx) = watch::channel(ServiceEndpoints::default());
    let mut relay = rx.clone();
    let service = service.clone();
    let watch = tokio::spawn(async move {
        follow_service(client, &service.namespace, &service.name, &service.port, tx).await;
    });
    let changed = changed.clone();
    let relay = tokio::spawn(async move {
        while relay.changed().await.is_ok() {
            changed.notify_one();
        }
    });
    Followed {
        endpoints: rx,
        generation: 0,
        tasks: [watch, relay],
    }
}
