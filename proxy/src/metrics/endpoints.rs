//! Per-endpoint metrics. The request path counts in each endpoint's own atomics; these series
//! are rebuilt from them at each scrape, so an endpoint that leaves the set leaves the metrics
//! too. At most [`MAX_ENDPOINTS`](crate::config::MAX_ENDPOINTS) endpoints per color, so the
//! series stay bounded.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::config::Color;
use crate::route::RouteTable;
use crate::upstream::outlier::State;

/// The endpoint series.
pub struct EndpointMetrics {
    /// `canary_proxy_endpoint_requests_total{color, endpoint, result}`.
    requests: IntCounterVec,
    /// `canary_proxy_endpoint_ejections_total{color, endpoint}`.
    ejections: IntCounterVec,
    /// `canary_proxy_endpoints{color, state}`.
    endpoints: IntGaugeVec,
}

impl EndpointMetrics {
    /// Registers the series in `registry`.
    pub fn register(registry: &Registry) -> Result<EndpointMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "canary_proxy_endpoint_requests_total",
                "Outcomes per endpoint of each color (result=success|failure), as outlier ejection counts them",
            ),
            &["color", "endpoint", "result"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "canary_proxy_endpoint_ejections_total",
                "Times an endpoint was ejected for failing in a row",
            ),
            &["color", "endpoint"],
        )?;
        let endpoints = IntGaugeVec::new(
            Opts::new(
                "canary_proxy_endpoints",
                "Endpoints per color by state: ready, ejected, probing",
            ),
            &["color", "state"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        Ok(EndpointMetrics {
            requests,
            ejections,
            endpoints,
        })
    }

    /// Sets the series to the endpoints of `table`.
    pub fn sync(&self, table: Option<&RouteTable>) {
        self.requests.reset();
        self.ejections.reset();
        self.endpoints.reset();
        let Some(table) = table else { return };
        for color in Color::ALL {
            let name = color.as_str();
            let mut states = [0i64; 3];
            for e in table.upstreams[color.index()].status() {
                let address = e.address.as_str();
                let count = |result| self.requests.with_label_values(&[name, address, result]);
                count("success").inc_by(e.requests - e.failures);
                count("failure").inc_by(e.failures);
                self.ejections
                    .with_label_values(&[name, address])
                    .inc_by(e.ejections);
                states[match e.state {
                    State::Ready => 0,
                    State::Ejected => 1,
                    State::Probing => 2,
                }] += 1;
            }
            for (state, count) in ["ready", "ejected", "probing"].into_iter().zip(states) {
                self.endpoints.with_label_values(&[name, state]).set(count);
            }
        }
    }
}
