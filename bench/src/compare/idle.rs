//! Memory per idle kept-alive client connection: many connections each make one request and
//! then stay open, as an ingress backend's clients do; the proxy's resident memory grows by
//! what it keeps for each of them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::procfs;
use crate::load::Target;
use crate::load::lean::Lean;

/// How long the proxy gets to settle after the last connection's request: longer than
/// canary-proxy waits before it parks an idle connection, so that every connection measured
/// is idle the way a kept-alive client connection spends most of its life.
const SETTLE: Duration =
    canary_proxy::lean::park::PARK_AFTER.saturating_add(Duration::from_millis(500));

/// Opens `connections` connections to `target`, one request each, holds them open, and
/// returns the growth of the resident memory of `pids` divided by the connections, in bytes;
/// `None` if a connection or its request failed.
pub async fn rss_per_connection(
    pids: &[u32],
    target: SocketAddr,
    connections: usize,
) -> Option<f64> {
    let before = procfs::rss_bytes(pids);
    let address = Target::from_addr(target);
    let mut open = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect(target).await.ok()?;
        let mut client = Lean::new(stream, &address);
        let answer = client.exchange().await.ok()?;
        if answer.close {
            return None;
        }
        open.push(client);
    }
    tokio::time::sleep(SETTLE).await;
    let after = procfs::rss_bytes(pids);
    drop(open);
    Some(after.saturating_sub(before) as f64 / connections as f64)
}
