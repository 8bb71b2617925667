//! The demo's HTML report: one self-contained file (inline SVG and CSS, no script, no external
//! asset) with the per-color request-rate chart, the timeline, the rollback and the latencies.

use std::fmt::Write;

use super::{DemoResult, Sample, StepKind};

/// Chart geometry, in SVG user units.
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

const BLUE: &str = "#1f6feb";
const GREEN: &str = "#1a7f37";
const RED: &str = "#cf222e";

/// Escapes text for HTML content and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `count` ticks over `span`.
fn tick_step(span: f64, count: f64) -> f64 {
    let raw = (span / count).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The request-rate chart: one line per color and one for failures, a marker per step.
fn chart(result: &DemoResult) -> String {
    let samples = &result.samples;
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = samples
        .iter()
        .map(|s| s.blue.max(s.green).max(s.failed))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: f64| LEFT + (WIDTH - LEFT - RIGHT) * t / t_max;
    let y = |v: f64| HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * v / y_max;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="requests per second by color" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">"#
    );
    let y_step = tick_step(y_max, 5.0);
    let mut v = 0.0;
    while v <= y_max {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y0 = y(v),
        );
        v += y_step;
    }
    let x_step = tick_step(t_max, 12.0);
    let mut t = 0.0;
    while t <= t_max {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t:.0} s</text>"#,
            x(t),
            HEIGHT - BOTTOM + 16.0
        );
        t += x_step;
    }
    let _ = write!(
        svg,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">responses / s</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    for step in &result.steps {
        let (label, color) = match step.kind {
            StepKind::Weight(w) => (format!("{w} %"), "#57606a"),
            StepKind::Fault => ("fault".to_string(), RED),
            StepKind::RolledBack => continue,
        };
        let sx = x(step.at.as_secs_f64());
        let _ = write!(
            svg,
            r#"<line x1="{sx:.1}" x2="{sx:.1}" y1="{TOP}" y2="{}" stroke="{color}" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="{color}">{}</text>"#,
            HEIGHT - BOTTOM,
            sx + 3.0,
            TOP - 8.0,
            escape(&label)
        );
    }
    if let Some(detected) = result.rollback.detected_after {
        let sx = x((result.rollback.fault_at + detected).as_secs_f64());
        let _ = write!(
            svg,
            r#"<line x1="{sx:.1}" x2="{sx:.1}" y1="{TOP}" y2="{}" stroke="{RED}" stroke-width="2"/><text x="{:.1}" y="{}" fill="{RED}">rollback</text>"#,
            HEIGHT - BOTTOM,
            sx + 3.0,
            TOP + 12.0
        );
    }
    let line = |pick: fn(&Sample) -> f64, color: &str, style: &str| {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), y(pick(s))))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" {style} points="{}"/>"#,
            points.join(" ")
        )
    };
    svg.push_str(&line(|s| s.blue, BLUE, r#"stroke-width="2""#));
    svg.push_str(&line(|s| s.green, GREEN, r#"stroke-width="2""#));
    // Dashed, so that green stays visible where every green answer fails.
    svg.push_str(&line(
        |s| s.failed,
        RED,
        r#"stroke-width="1.5" stroke-dasharray="5 3""#,
    ));
    svg.push_str("</svg>");
    svg
}

fn ms(d: Option<std::time::Duration>) -> String {
    d.map_or("n/a".to_string(), |d| {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    })
}

/// The whole report.
pub fn render(result: &DemoResult) -> String {
    let mut html = String::new();
    let passed = result.checks.iter().filter(|c| c.passed).count();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>canary-bench demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#1f2328}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}table.figures td{{white-space:nowrap}}table.text td{{text-align:left}}.pass{{color:{GREEN}}}.fail{{color:{RED}}}
.key span{{display:inline-block;width:14px;height:3px;margin:0 4px 3px 12px}}</style></head><body>
<h1>canary-bench demo</h1>
<p>Blue and green upstreams behind canary-proxy, {:.0} requests/s open loop over {} connections, rollback window {} s.
Checks: <b class="{}">{passed} of {} held</b>. The demo took {:.1} s.</p>
<h2>Responses per second by color</h2>
<p class="key"><span style="background:{BLUE}"></span>blue<span style="background:{GREEN}"></span>green<span style="background:{RED}"></span>failed (5xx or no response)</p>
"#,
        result.pacing.rate,
        result.pacing.connections,
        result.pacing.window.as_secs(),
        if result.passed() { "pass" } else { "fail" },
        result.checks.len(),
        result.elapsed.as_secs_f64(),
    );
    html.push_str(&chart(result));
    html.push_str(
        "<h2>Timeline</h2><table class=\"figures\"><tr><th>step</th><th>time</th><th>weight</th><th>blue</th><th>green</th>\
         <th>responses</th><th>client errors</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th></tr>",
    );
    for step in &result.steps {
        let c = &step.counts;
        let l = &step.latency;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:.1} s</td><td>{:.0} %</td><td>{:.2} %</td><td>{:.2} %</td><td>{}</td><td>{}</td>\
             <td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            escape(&step.label),
            step.at.as_secs_f64(),
            step.weight,
            c.share(c.blue),
            c.share(c.green),
            c.total(),
            c.client_errors(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
    }
    let l = &result.latency;
    let _ = write!(
        html,
        "<tr><td><b>whole run</b></td><td></td><td></td><td></td><td></td><td>{}</td><td></td>\
         <td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr></table>",
        l.count, l.p50, l.p90, l.p99, l.p999, l.max
    );
    let r = &result.rollback;
    let _ = write!(
        html,
        "<h2>Rollback</h2><table>\
         <tr><td>rolled back</td><td>{}</td></tr><tr><td>proxy's reason</td><td>{}</td></tr>\
         <tr><td>client-visible failures during the fault</td><td>{} 5xx, {} without response</td></tr>\
         <tr><td>first failing response &rarr; last response from green</td><td>{}</td></tr>\
         <tr><td>proxy's rollback.at</td><td>{}</td></tr>\
         <tr><td>fault injected &rarr; rollback visible on /status</td><td>{}</td></tr></table>",
        if r.happened {
            escape(r.color.as_deref().unwrap_or("yes"))
        } else {
            "no".to_string()
        },
        escape(r.reason.as_deref().unwrap_or("")),
        r.client_failures,
        r.client_errors,
        ms(r.swap_client),
        match (&r.proxy_at, r.swap_proxy_s) {
            (Some(at), Some(s)) => format!(
                "{} ({s:+.3} s after the first failing response)",
                escape(at)
            ),
            (Some(at), None) => escape(at),
            _ => "n/a".to_string(),
        },
        ms(r.detected_after),
    );
    html.push_str("<h2>Checks</h2><table class=\"text\">");
    for check in &result.checks {
        let _ = write!(
            html,
            r#"<tr><td class="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            if check.passed { "pass" } else { "fail" },
            if check.passed { "PASS" } else { "FAIL" },
            escape(&check.name),
            escape(&check.detail)
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(2200.0, 5.0), 500.0);
        assert_eq!(tick_step(31.0, 12.0), 5.0);
        assert_eq!(tick_step(14.0, 12.0), 2.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
