//! The rollback verdict, in the order the evidence flows: each outcome lands in the sharded
//! [`tally`]; a per-canary [`judge`] feeds what is new to the pure [`sequential`] test; the
//! [`history`] keeps readings for the window `/status` shows; [`latency`] is the histogram
//! both use; [`slowdown`] is the latency trigger on that histogram.

pub mod history;
pub mod judge;
pub mod latency;
pub mod sequential;
pub mod slowdown;
pub mod tally;
