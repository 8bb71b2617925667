//! `GET /evidence`: what one replica tells the fleet's judge. Weighted counts only (forced
//! requests are never evidence), cumulative since the process started, so the judge takes
//! differences and a lost or repeated gather loses or repeats nothing.

use serde::{Deserialize, Serialize};

use crate::config::Color;
use crate::rollback::sequential::Counts;
use crate::runtime::Runtime;

/// One replica's evidence, as served on `/evidence`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// This process's random id: a restarted replica is a new process whose counts start at 0.
    pub process: String,
    /// The revision of the configuration it routes by.
    pub revision: String,
    /// The canary color it routes to, so counts about another canary are not summed.
    pub canary: String,
    /// The canary's upstream: a new release at the same color is another canary.
    pub canary_upstream: String,
    /// The stable color.
    pub stable: String,
    /// Whether this replica has rolled the canary back.
    pub rolled_back: bool,
    /// Weighted requests and failures per color since the process started.
    pub weighted: Weighted,
}

/// Weighted counts per color.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Weighted {
    /// Blue's weighted outcomes.
    pub blue: Counts,
    /// Green's weighted outcomes.
    pub green: Counts,
}

impl Weighted {
    /// The counts of `color`.
    pub fn of(&self, color: Color) -> Counts {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }
}

impl Runtime {
    /// This replica's evidence; `None` before a configuration is loaded.
    pub fn evidence(&self) -> Option<Evidence> {
        let table = self.routes().clone()?;
        let canary = table.config.canary();
        Some(Evidence {
            process: self.process.clone(),
            revision: table.revision.to_string(),
            canary: canary.as_str().to_owned(),
            canary_upstream: table.config.upstream(canary).to_string(),
            stable: table.config.stable.as_str().to_owned(),
            rolled_back: table.rolled_back.is_some(),
            weighted: Weighted {
                blue: self.tally.weighted(Color::Blue),
                green: self.tally.weighted(Color::Green),
            },
        })
    }
}
