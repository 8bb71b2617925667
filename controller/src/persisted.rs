//! What a ConfigMap says about its canary and about a rollback of it, read without I/O.
//!
//! A rollback is recorded in annotations that name the canary it judged (color and upstream)
//! and the configuration revision. The record applies only while the ConfigMap still
//! configures that canary, whatever the weight: re-applying the manifest (GitOps) restores the
//! weight but not the canary, so the rollback stays. A new upstream or another stable color
//! is a new canary, which the record no longer concerns: it is then stale, to be cleared.

use std::collections::BTreeMap;

use crate::{
    ROLLBACK_ANNOTATIONS, ROLLBACK_REASON_ANNOTATION, ROLLED_BACK_AT_ANNOTATION,
    ROLLED_BACK_CANARY_ANNOTATION, ROLLED_BACK_REVISION_ANNOTATION,
    ROLLED_BACK_UPSTREAM_ANNOTATION,
};

/// The canary a ConfigMap configures: the color that is not `stable`, and its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// `blue` or `green`.
    pub color: &'static str,
    /// The `<color>.upstream` value as written (empty if the key is missing).
    pub upstream: String,
}

impl Canary {
    /// The canary of this `data`, with the DESIGN.md default `stable: blue`; `None` if
    /// `stable` names no color (such data is rejected anyway).
    pub fn configured(data: &BTreeMap<String, String>) -> Option<Canary> {
        let color = match data.get("stable").map_or("blue", |s| s.trim()) {
            "blue" => "green",
            "green" => "blue",
            _ => return None,
        };
        let upstream = data
            .get(&format!("{color}.upstream"))
            .cloned()
            .unwrap_or_default();
        Some(Canary { color, upstream })
    }

    /// Whether this is the canary `color` at `upstream`; `http://host:port/` and `host:port`
    /// name the same upstream.
    pub fn is(&self, color: &str, upstream: &str) -> bool {
        self.color == color && normalize_upstream(&self.upstream) == normalize_upstream(upstream)
    }
}

/// A rollback as the ConfigMap's annotations record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedRollback {
    /// The canary color rolled back.
    pub color: &'static str,
    /// The reason, with the figures.
    pub reason: String,
    /// When, RFC 3339.
    pub at: String,
    /// The configuration revision whose evidence was judged.
    pub revision: String,
}

/// How a ConfigMap's rollback annotations relate to the canary it configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackState {
    /// No rollback annotation at all.
    None,
    /// The annotations record a rollback of the canary configured now: it stays rolled back.
    Applies(PersistedRollback),
    /// Some rollback annotations remain, but they name another canary (replaced) or are
    /// incomplete (a partial resume, or a record from an older version that named no canary):
    /// they apply to nothing and should be cleared.
    Stale,
}

impl RollbackState {
    /// Reads the rollback annotations against the canary `data` configures.
    pub fn read(
        data: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> RollbackState {
        if !ROLLBACK_ANNOTATIONS
            .iter()
            .any(|key| annotations.contains_key(*key))
        {
            return RollbackState::None;
        }
        let get = |key: &str| annotations.get(key).map(|v| v.trim());
        let (Some(at), Some(color), Some(upstream), Some(canary)) = (
            get(ROLLED_BACK_AT_ANNOTATION),
            get(ROLLED_BACK_CANARY_ANNOTATION),
            get(ROLLED_BACK_UPSTREAM_ANNOTATION),
            Canary::configured(data),
        ) else {
            return RollbackState::Stale;
        };
        if !canary.is(color, upstream) {
            return RollbackState::Stale;
        }
        RollbackState::Applies(PersistedRollback {
            color: canary.color,
            reason: get(ROLLBACK_REASON_ANNOTATION)
                .unwrap_or_default()
                .to_owned(),
            at: at.to_owned(),
            revision: get(ROLLED_BACK_REVISION_ANNOTATION)
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// `http://host:port/` and `host:port` name the same upstream.
fn normalize_upstream(upstream: &str) -> &str {
    let upstream = upstream.trim();
    upstream
        .strip_prefix("http://")
        .unwrap_or(upstream)
        .trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DATA: [(&str, &str); 3] = [
        ("blue.upstream", "blue.prod:8080"),
        ("green.upstream", "http://green.prod:8080/"),
        ("canary-weight", "5"),
    ];

    fn record() -> BTreeMap<String, String> {
        map(&[
            (ROLLED_BACK_AT_ANNOTATION, "2026-01-01T00:00:00.000Z"),
            (ROLLBACK_REASON_ANNOTATION, "canary failed 20 of 20"),
            (ROLLED_BACK_CANARY_ANNOTATION, "green"),
            (ROLLED_BACK_UPSTREAM_ANNOTATION, "green.prod:8080"),
            (ROLLED_BACK_REVISION_ANNOTATION, "7"),
        ])
    }

    #[test]
    fn a_record_of_the_configured_canary_applies_at_any_weight() {
        let state = RollbackState::read(&map(&DATA), &record());
        let RollbackState::Applies(rollback) = state else {
            panic!("{state:?}");
        };
        assert_eq!((rollback.color, rollback.revision.as_str()), ("green", "7"));
        assert_eq!(
            RollbackState::read(&map(&DATA), &map(&[])),
            RollbackState::None
        );
    }

    #[test]
    fn a_record_of_another_canary_is_stale() {
        let mut data = map(&DATA);
        data.insert("green.upstream".into(), "green-v2.prod:8080".into());
        assert_eq!(
            RollbackState::read(&data, &record()),
            RollbackState::Stale,
            "new release"
        );
        let mut data = map(&DATA);
        data.insert("stable".into(), "green".into());
        data.insert("canary-weight".into(), "0".into());
        assert_eq!(
            RollbackState::read(&data, &record()),
            RollbackState::Stale,
            "promoted"
        );
        let mut partial = record();
        partial.remove(ROLLED_BACK_AT_ANNOTATION);
        assert_eq!(
            RollbackState::read(&map(&DATA), &partial),
            RollbackState::Stale
        );
        let legacy = map(&[(ROLLED_BACK_AT_ANNOTATION, "2026-01-01T00:00:00Z")]);
        assert_eq!(
            RollbackState::read(&map(&DATA), &legacy),
            RollbackState::Stale
        );
    }

    #[test]
    fn the_canary_is_the_color_that_is_not_stable() {
        let canary = Canary::configured(&map(&DATA)).unwrap();
        assert!(canary.is("green", "green.prod:8080"));
        assert!(!canary.is("blue", "green.prod:8080"));
        assert_eq!(Canary::configured(&map(&[("stable", "purple")])), None);
    }
}
