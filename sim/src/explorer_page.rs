//! A sweep as a self-contained HTML page: the explorer matrix (one row per scenario, unmet
//! expectations in red), the seeds each planted bug needed beside its bug-off control, and
//! the first flagged seeds of every scenario with their replay commands (add `--html FILE`
//! to one to draw its timeline).

use crate::report::{expected_label, COMMIT};
use crate::scenario::Scenario;
use crate::sweep::{matrix, meets, Row, SeedResult};
use crate::timeline::escape;
use std::fmt::Write as _;

/// Flagged seeds listed per scenario.
const FLAGGED_SHOWN: usize = 3;

/// The whole page.
pub fn render(planned: &[Scenario], results: &[SeedResult], wall_s: f64) -> String {
    let rows = matrix(planned, results);
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>holdfast-sim sweep at commit {COMMIT}</title>\
         <style>{STYLE}</style></head><body><h1>holdfast-sim sweep at commit {COMMIT}</h1>\
         <p>{} seeds over {} scenarios, {} simulated events, wall {wall_s:.1}s</p>",
        results.len(),
        rows.len(),
        results.iter().map(|r| r.sent).sum::<usize>()
    );
    out.push_str(
        "<table class=\"matrix\"><tr><th>scenario</th><th>configuration</th><th>seeds</th>\
         <th>with loss (broker / consumer)</th><th>lost</th><th>redeliveries</th><th>flagged</th>\
         <th>first caught</th><th>invariants broken</th><th>expected</th><th>verdict</th></tr>",
    );
    let mut all_met = true;
    for (scenario, row) in &rows {
        let met = meets(*scenario, row);
        all_met &= met;
        matrix_row(&mut out, *scenario, row, met);
    }
    out.push_str("</table>");
    let _ = write!(
        out,
        "<p class=\"{}\">verdict: {}</p>",
        if all_met { "met" } else { "unmet" },
        if all_met {
            "every expectation met"
        } else {
            "EXPECTATIONS UNMET"
        }
    );
    flagged_seeds(&mut out, &rows, results);
    out.push_str(CHECK_SCRIPT);
    out.push_str("</body></html>\n");
    out
}

fn matrix_row(out: &mut String, scenario: Scenario, row: &Row, met: bool) {
    let broke: Vec<String> = row
        .invariants
        .iter()
        .map(|(invariant, seeds)| format!("{invariant} &times;{seeds}"))
        .collect();
    let first = row
        .first_caught
        .map_or("-".to_owned(), |n| format!("seed #{n}"));
    let _ = write!(
        out,
        "<tr class=\"scenario{}\"><td>{}</td><td>{}</td><td>{}</td><td>{} ({} / {})</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{first}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
        if met { "" } else { " unmet-row" },
        scenario.name(),
        escape(scenario.describe()),
        row.seeds,
        row.seeds_with_loss,
        row.seeds_broker_loss,
        row.seeds_consumer_loss,
        row.lost,
        row.redeliveries,
        row.failing_seeds,
        broke.join(", "),
        expected_label(scenario),
        if met { "met" } else { "unmet" },
        if met { "ok" } else { "UNMET" }
    );
}

/// The first flagged seeds of each scenario, with what they broke and their replay command.
fn flagged_seeds(
    out: &mut String,
    rows: &std::collections::BTreeMap<Scenario, Row>,
    results: &[SeedResult],
) {
    out.push_str("<h2>flagged seeds</h2>");
    for scenario in rows.keys() {
        let flagged: Vec<&SeedResult> = results
            .iter()
            .filter(|r| r.scenario == *scenario && r.failed())
            .take(FLAGGED_SHOWN)
            .collect();
        if flagged.is_empty() {
            continue;
        }
        let unmet = flagged.iter().any(|result| result.beyond_expectation());
        let _ = write!(
            out,
            "<h3 class=\"{}\">{}</h3><ul>",
            if unmet { "unmet" } else { "" },
            scenario.name()
        );
        for result in flagged {
            let what = result.panic.clone().unwrap_or_else(|| {
                let names: Vec<&str> = result.invariants.iter().map(|i| i.name()).collect();
                names.join(", ")
            });
            let _ = write!(
                out,
                "<li class=\"flagged\">seed {}: {}<br><code>{} --html timeline.html</code></li>",
                result.seed,
                escape(&what),
                escape(&result.replay)
            );
        }
        out.push_str("</ul>");
    }
}

const STYLE: &str = "body{font:13px sans-serif;margin:16px}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}tr.unmet-row td{background:#fdd}\
.unmet{color:#b00}.met{color:#060}code{background:#eee;padding:1px 4px}";

/// Counts what the browser laid out: matrix rows with a non-empty box.
const CHECK_SCRIPT: &str = "<script>addEventListener('load',function(){\
var rows=Array.prototype.filter.call(document.querySelectorAll('tr.scenario'),\
function(e){var b=e.getBoundingClientRect();return b.width>0&&b.height>0}).length;\
var r=document.createElement('div');r.id='rendered';r.setAttribute('data-rows',rows);\
document.body.appendChild(r)});</script>";
