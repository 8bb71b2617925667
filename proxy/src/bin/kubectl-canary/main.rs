//! `kubectl canary`: a kubectl plugin (any `kubectl-canary` on the `PATH`) for canary-proxy, in
//! the manner of `kubectl argo rollouts`: `status` reads the proxy's `/status` through the API
//! server's service proxy and prints the step plan, the evidence and the verdict; `set-weight`,
//! `promote`, `pause`, `resume` and `abort` each patch the ConfigMap under its
//! resourceVersion.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use canary_controller::ConfigMapRef;
use canary_controller::plugin::{self, Change};
use clap::{Parser, Subcommand};
use serde_json::Value;

/// Progressive delivery with canary-proxy, from kubectl.
#[derive(Parser, Debug)]
#[command(name = "kubectl canary", version, about)]
struct Args {
    /// The namespace [default: the kubeconfig's].
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The proxy's ConfigMap.
    #[arg(long, global = true, default_value = "canary-proxy")]
    configmap: String,
    /// The proxy's Service, whose admin port serves /status.
    #[arg(long, global = true, default_value = "canary-proxy")]
    service: String,
    /// That port, by name or number.
    #[arg(long, global = true, default_value = "admin")]
    port: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The step plan, the evidence at the current step and the verdict.
    Status {
        /// Print the proxy's /status JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Sets the canary's weight (while steps run, this pauses them).
    SetWeight {
        /// The weight, out of canary-weight-total.
        weight: u32,
    },
    /// Moves the canary to the next step (after the last, or with --full, makes it stable).
    Promote {
        /// Skip the remaining steps: the canary becomes stable now.
        #[arg(long)]
        full: bool,
    },
    /// Holds the current step.
    Pause,
    /// Resumes the steps (also after a pause by a hand edit of the weight).
    Resume,
    /// Rolls the canary back now: all traffic to stable, recorded as a rollback.
    Abort,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = canary_controller::connect_for_command()
        .await
        .context("cannot load the Kubernetes client configuration")?;
    let namespace = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let cm = ConfigMapRef::new(&namespace, &args.configmap)
        .with_context(|| format!("--configmap {:?}", args.configmap))?;
    let change = match args.command {
        Command::Status { json } => {
            let status = plugin::status(&client, &namespace, &args.service, &args.port).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", render(&cm, &status));
            }
            return Ok(());
        }
        Command::SetWeight { weight } => Change::SetWeight(weight),
        Command::Promote { full } => Change::Promote { full },
        Command::Pause => Change::Pause,
        Command::Resume => Change::Resume,
        Command::Abort => Change::Abort,
    };
    println!("{}", plugin::apply(&client, &cm, change).await?);
    Ok(())
}

/// `/status` as a terminal table.
fn render(cm: &ConfigMapRef, s: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut rows: Vec<(&str, String)> = vec![
        (
            "ConfigMap",
            format!("{cm} (revision {})", text(&s["revision"])),
        ),
        (
            "Split",
            format!(
                "stable {}, canary {} at {}/{}",
                text(&s["stable"]),
                text(&s["canary"]),
                text(&s["configured_weight"]["weight"]),
                text(&s["configured_weight"]["total"]),
            ),
        ),
    ];
    let p = &s["progressive"];
    if p.is_object() {
        let current = &p["current_step"];
        let mut plan: Vec<String> = p["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|step| {
                if step == current {
                    format!("[{step}]")
                } else {
                    step.to_string()
                }
            })
            .collect();
        plan.push("promote".to_owned());
        rows.push(("Steps", plan.join(" -> ")));
        rows.push((
            "State",
            format!("{}: {}", text(&p["state"]), text(&p["message"])),
        ));
        if p["seconds_at_step"].is_number() {
            rows.push((
                "At step",
                format!(
                    "{:.0} s (least {}), canary {} requests ({} failed, least {}), stable {} ({} failed)",
                    p["seconds_at_step"].as_f64().unwrap_or(0.0),
                    text(&p["min_seconds"]),
                    text(&p["canary_at_step"]["requests"]),
                    text(&p["canary_at_step"]["failures"]),
                    text(&p["min_requests"]),
                    text(&p["stable_at_step"]["requests"]),
                    text(&p["stable_at_step"]["failures"]),
                ),
            ));
        }
        let gate = &p["gate"];
        if gate.is_object() {
            let mut line = format!(
                "failures {} of {}",
                text(&gate["failure_statistic"]),
                text(&gate["boundary"])
            );
            if gate["latency_statistic"].is_number() {
                let _ = write!(
                    line,
                    ", latency {} of {}",
                    text(&gate["latency_statistic"]),
                    text(&gate["boundary"])
                );
            }
            rows.push(("Evidence", line));
            if gate["note"].is_string() {
                rows.push(("Note", text(&gate["note"])));
            }
        }
        let waiting: Vec<String> = p["waiting_for"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        if !waiting.is_empty() {
            rows.push(("Waiting for", waiting.join(", ")));
        }
        if p["next_step"].is_string() {
            rows.push((
                "Next",
                format!(
                    "{} in {:.0} s at the earliest",
                    text(&p["next_step"]),
                    p["next_step_earliest_in_seconds"].as_f64().unwrap_or(0.0)
                ),
            ));
        }
        for done in p["steps_done"].as_array().into_iter().flatten() {
            rows.push((
                "Done",
                format!(
                    "{} -> {} after {:.0} s, canary {} requests ({} failed), at {}",
                    text(&done["weight"]),
                    text(&done["to"]),
                    done["seconds"].as_f64().unwrap_or(0.0),
                    text(&done["canary"]["requests"]),
                    text(&done["canary"]["failures"]),
                    text(&done["at"]),
                ),
            ));
        }
    }
    let r = &s["rollback"];
    let mut verdict = format!(
        "{} (failure test {} of {}, relative {} of {})",
        text(&r["verdict"]),
        text(&r["test"]["statistic"]),
        text(&r["test"]["boundary"]),
        text(&r["test"]["relative_statistic"]),
        text(&r["test"]["relative_boundary"]),
    );
    if r["latency"].is_object() {
        let _ = write!(
            verdict,
            ", latency {} of {}",
            text(&r["latency"]["statistic"]),
            text(&r["latency"]["boundary"])
        );
    }
    rows.push(("Verdict", verdict));
    if r["rolled_back"] == true {
        rows.push((
            "Rolled back",
            format!("{}: {}", text(&r["at"]), text(&r["reason"])),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().fold(String::new(), |mut out, (key, value)| {
        let _ = writeln!(out, "{key:<width$}  {value}");
        out
    })
}
