//! The judge's loop: about once a second, while this replica holds the Lease, ask every member
//! for its `/evidence`, judge the fleet's sum, and roll back locally when the test says so (the
//! Kubernetes write-back persists it and the other replicas converge through their watch).
//! Then the step plan looks at the same sum and moves the weight when it says so; the step is
//! written into the ConfigMap, which the other replicas follow.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::fleet::Standing;
use crate::fleet::evidence::Evidence;
use crate::fleet::verdict::{Canary, FleetJudge};
use crate::progressive::Seat;
use crate::rollback::sequential::Verdict;
use crate::runtime::Runtime;

/// How often the judge gathers.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long one peer may take to answer; a slower one is left out of this gather.
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// The header in which the judge names itself to the peers it asks.
pub const JUDGE_HEADER: &str = "x-canary-proxy-judge";

/// Largest evidence document accepted.
const MAX_EVIDENCE: usize = 16 * 1024;

/// Why a peer's evidence could not be had.
#[derive(Debug, Error)]
pub enum GatherError {
    /// No connection, or it broke.
    #[error("peer unreachable: {0}")]
    Connect(#[from] std::io::Error),
    /// The exchange failed.
    #[error("peer exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The peer did not answer in time.
    #[error("peer did not answer within {PEER_TIMEOUT:?}")]
    Timeout,
    /// The peer answered, but not with evidence (no configuration yet, or not `--fleet`).
    #[error("peer answered {0}")]
    Status(StatusCode),
    /// The body was not evidence.
    #[error("peer's evidence unreadable: {0}")]
    Body(String),
}

/// Fetches one peer's evidence, naming this judge.
pub async fn fetch(peer: SocketAddr, judge: &str) -> Result<Evidence, GatherError> {
    tokio::time::timeout(PEER_TIMEOUT, fetch_now(peer, judge))
        .await
        .map_err(|_| GatherError::Timeout)?
}

async fn fetch_now(peer: SocketAddr, judge: &str) -> Result<Evidence, GatherError> {
    let stream = TcpStream::connect(peer).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get("/evidence")
        .header(http::header::HOST, peer.to_string())
        .header(JUDGE_HEADER, judge)
        .body(Empty::<Bytes>::new())
        .map_err(|e| GatherError::Body(e.to_string()))?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(GatherError::Status(response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_EVIDENCE)
        .collect()
        .await
        .map_err(|e| GatherError::Body(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| GatherError::Body(e.to_string()))
}

/// Judges the fleet whenever `standing` says this replica holds the Lease, until `stop`.
pub async fn keep_judging(
    runtime: Arc<Runtime>,
    standing: watch::Receiver<Standing>,
    stop: impl Future<Output = ()>,
) {
    let Some(fleet) = runtime.fleet() else {
        return;
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut judge: Option<FleetJudge> = None;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let Standing {
            members: peers,
            leading: leads,
            api_connected,
        } = standing.borrow().clone();
        {
            let mut view = fleet.view();
            view.members = peers.clone();
            view.api_connected = api_connected;
            if leads != view.is_judge {
                info!(judge = leads, identity = %fleet.identity, "fleet judge changed");
            }
            view.is_judge = leads;
            if leads {
                view.judge = Some(fleet.identity.clone());
            } else {
                view.judgement = None;
                view.answered = 0;
            }
        }
        runtime.metrics.fleet_judge.set(i64::from(leads));
        if !leads {
            // A judge elected later starts from its own first gather; the shared-fault gauge
            // is the judge's to set, and the step plan the judge's to run.
            judge = None;
            if let Some(table) = runtime.routes().as_deref() {
                runtime.set_shared_fault(table.config.canary(), false);
                table.progress.follow();
            }
            runtime.metrics.progressive.clear();
        } else {
            let judge = judge.get_or_insert_with(FleetJudge::new);
            gather_once(&runtime, judge, &peers).await;
        }
        let isolated = fleet.isolated(runtime.now_ms());
        runtime
            .metrics
            .fleet_isolated
            .set(i64::from(isolated.is_some()));
    }
}

/// One gather and its verdict.
async fn gather_once(runtime: &Runtime, judge: &mut FleetJudge, peers: &[SocketAddr]) {
    let Some(fleet) = runtime.fleet() else {
        return;
    };
    let mut asks = JoinSet::new();
    for &peer in peers {
        let identity = fleet.identity.clone();
        asks.spawn(async move { (peer, fetch(peer, &identity).await) });
    }
    let mut reports = Vec::with_capacity(peers.len() + 1);
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok((_, Ok(evidence))) => reports.push(evidence),
            Ok((peer, Err(e))) => debug!(%peer, error = %e, "no evidence from a peer"),
            Err(e) => debug!(error = %e, "an evidence request failed"),
        }
    }
    let Some(table) = runtime.routes().clone() else {
        return;
    };
    // This replica counts whether or not its own address is among the members yet.
    if let Some(own) = runtime.evidence()
        && !reports.iter().any(|r| r.process == own.process)
    {
        reports.push(own);
    }
    let answered = reports.len();
    let canary = Canary {
        color: table.config.canary(),
        upstream: table.config.upstream(table.config.canary()).to_string(),
    };
    let judging = table.config.rollback.enabled
        && table.rolled_back.is_none()
        && table.plan.can_roll_back()
        && table.config.canary_reachable();
    let judgement = judge.gather(&table.plan, &canary, table.canary_share(), &reports);
    {
        let mut view = fleet.view();
        view.judgement = Some(judgement);
        view.answered = answered;
    }
    runtime.set_shared_fault(
        canary.color,
        judging && judgement.verdict == Verdict::SharedFault,
    );
    if judging && let Verdict::RollBack(evidence) = judgement.verdict {
        let reason = format!(
            "fleet judge on {} replicas' evidence: {}",
            judgement.reporting,
            evidence.reason()
        );
        warn!(replicas = judgement.reporting, "fleet verdict: roll back");
        runtime.roll_back(&table, reason);
    }
    // The plan runs after the verdict on the table it left, unless that rolled back or a
    // reload replaced it meanwhile (the evidence is about the table's canary).
    if table.rolled_back.is_none()
        && let Some(now) = runtime.routes().clone()
        && Arc::ptr_eq(&now, &table)
    {
        runtime.step_plan(&table, Seat::Judge, &judge.evidence());
    }
}
