//! Rollback decision: per-color sliding windows ([`window`]) fed by response accounting, and
//! the pure rule ([`decision`]) that says when the canary must go.

pub mod decision;
pub mod window;
