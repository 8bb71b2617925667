//! DNS names in a static upstream list, resolved again every [`REFRESH`] (as NGINX's
//! `resolver valid=`) instead of on every new connection: the color's endpoints become the
//! addresses the name has, each balanced and pooled as any endpoint, and a name that now
//! resolves elsewhere moves the traffic within one period. A failed lookup keeps the last
//! addresses. The system resolver does not tell the record's TTL, so the period is fixed.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use crate::config::{Color, UpstreamAddr, Upstreams};
use crate::runtime::Runtime;

/// How long a resolution is used before the names are resolved again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Resolves the DNS names of the applied configuration's static upstreams now and every
/// [`REFRESH`], until `stop`.
pub async fn keep_resolving(runtime: Arc<Runtime>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let Some(table) = (*runtime.routes()).clone() else {
            continue;
        };
        for color in Color::ALL {
            let Upstreams::Static(list) = table.config.upstream(color) else {
                continue;
            };
            if list.iter().all(|a| a.host().parse::<IpAddr>().is_ok()) {
                continue;
            }
            match resolve(list).await {
                Ok(addrs) => {
                    failing = false;
                    table.upstreams[color.index()].update(&addrs);
                }
                Err(e) => {
                    if !failing {
                        warn!(%color, error = %e, "cannot resolve the upstream; keeping its last addresses");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// The addresses of `list`: IP literals as they are, each name as every address it has.
async fn resolve(list: &[UpstreamAddr]) -> std::io::Result<Vec<UpstreamAddr>> {
    let mut addrs: Vec<UpstreamAddr> = Vec::new();
    for entry in list {
        if entry.host().parse::<IpAddr>().is_ok() {
            addrs.push(entry.clone());
            continue;
        }
        for addr in tokio::net::lookup_host((entry.host(), entry.port())).await? {
            let addr = UpstreamAddr {
                authority: addr.to_string().parse().expect("a socket address"),
            };
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    debug!(count = addrs.len(), "upstream resolved");
    if addrs.is_empty() {
        return Err(std::io::Error::other("the names resolved to no address"));
    }
    Ok(addrs)
}
