//! A run's history as a self-contained HTML page, after Jepsen's `timeline.html`: one lane per
//! process (the producer, each consumer incarnation, the group coordinator, each node a fault
//! hit), its polls, applies, commits and faults on a virtual-time axis, and the steps a
//! violation names ringed in red, with the violations and the replay command above.
//!
//! The page is static SVG with native tooltips; a small script checks, in the browser that
//! shows it, that every lane and marker was laid out (the headless-browser test reads it).

use crate::checker::Violation;
use crate::history::{describe, Step};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What one page shows.
pub struct Page<'a> {
    pub title: &'a str,
    pub replay: &'a str,
    pub world: &'a str,
    pub virtual_ms: u64,
    pub steps: &'a [(u64, Step)],
    /// Faults and model events as the report prints them (`t=   12.000ms kill broker-0`).
    pub faults: &'a [String],
    pub violations: &'a [Violation],
}

const LEFT_PX: f64 = 190.0;
const PLOT_PX: f64 = 1300.0;
const LANE_PX: f64 = 24.0;
const TOP_PX: f64 = 30.0;

/// One mark on a lane.
struct Mark {
    at_ms: f64,
    lane: String,
    glyph: Glyph,
    label: String,
    flagged: bool,
}

#[derive(Clone, Copy)]
enum Glyph {
    Send,
    Unacked,
    Poll,
    Applied,
    Duplicate,
    Assign,
    Revoke,
    Commit,
    Stored,
    DeadLetter,
    Fault,
}

impl Glyph {
    fn class(self) -> &'static str {
        match self {
            Glyph::Send => "send",
            Glyph::Unacked => "unacked",
            Glyph::Poll => "poll",
            Glyph::Applied => "applied",
            Glyph::Duplicate => "duplicate",
            Glyph::Assign => "assign",
            Glyph::Revoke => "revoke",
            Glyph::Commit => "commit",
            Glyph::Stored => "stored",
            Glyph::DeadLetter => "dead-letter",
            Glyph::Fault => "fault",
        }
    }
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let tokens = violation_tokens(page.violations);
    let mut marks: Vec<Mark> = page
        .steps
        .iter()
        .map(|(at_ms, step)| mark(*at_ms as f64, step, &tokens))
        .collect();
    marks.extend(page.faults.iter().filter_map(|line| fault_mark(line)));
    let lanes = lanes(&marks);
    let mut out = String::with_capacity(200 * marks.len() + 4096);
    head(&mut out, page);
    svg(&mut out, page, &lanes, &marks);
    out.push_str(CHECK_SCRIPT);
    out.push_str("</body></html>\n");
    out
}

fn head(out: &mut String, page: &Page) {
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\
         <h1>{}</h1><p>replay: <code>{}</code></p><p class=\"world\">{}</p>",
        escape(page.title),
        escape(page.title),
        escape(page.replay),
        escape(page.world)
    );
    if page.violations.is_empty() {
        out.push_str("<p class=\"pass\">every invariant held</p>");
    } else {
        out.push_str("<ul class=\"violations\">");
        for violation in page.violations {
            let _ = write!(
                out,
                "<li class=\"violation-detail\"><b>{}</b>: {}</li>",
                violation.invariant,
                escape(&violation.detail)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str(LEGEND);
}

fn svg(out: &mut String, page: &Page, lanes: &[String], marks: &[Mark]) {
    let span_ms = (page.virtual_ms.max(1)) as f64;
    let height = TOP_PX + LANE_PX * lanes.len() as f64 + 10.0;
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\">",
        LEFT_PX + PLOT_PX + 20.0
    );
    axis(out, span_ms, height);
    let index: BTreeMap<&str, usize> = lanes
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    for (i, name) in lanes.iter().enumerate() {
        let y = TOP_PX + LANE_PX * i as f64;
        let _ = write!(
            out,
            "<g class=\"lane\" data-lane=\"{0}\"><rect class=\"lane-bg\" x=\"0\" y=\"{y}\" width=\"{1}\" height=\"{LANE_PX}\"/><text x=\"6\" y=\"{2}\">{0}</text></g>",
            escape(name),
            LEFT_PX + PLOT_PX,
            y + LANE_PX * 0.65
        );
    }
    for mark in marks {
        let lane = index.get(mark.lane.as_str()).copied().unwrap_or(0);
        let x = LEFT_PX + mark.at_ms / span_ms * PLOT_PX;
        let y = TOP_PX + LANE_PX * lane as f64 + LANE_PX / 2.0;
        glyph(out, mark, x, y);
    }
    out.push_str("</svg>");
}

/// Time ticks: about ten, at a round number of milliseconds.
fn axis(out: &mut String, span_ms: f64, height: f64) {
    let raw = span_ms / 10.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let mut at = 0.0;
    while at <= span_ms {
        let x = LEFT_PX + at / span_ms * PLOT_PX;
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{x}\" y1=\"{TOP_PX}\" x2=\"{x}\" y2=\"{height}\"/><text class=\"tick\" x=\"{x}\" y=\"18\">{}s</text>",
            at / 1000.0
        );
        at += step;
    }
}

fn glyph(out: &mut String, mark: &Mark, x: f64, y: f64) {
    let class = mark.glyph.class();
    let title = format!(
        "<title>{:.0} ms {}</title>",
        mark.at_ms,
        escape(&mark.label)
    );
    let shape = match mark.glyph {
        Glyph::Poll | Glyph::Commit => {
            format!("<rect class=\"{class}\" x=\"{x}\" y=\"{}\" width=\"1.5\" height=\"10\">{title}</rect>", y - 5.0)
        }
        Glyph::Fault => format!(
            "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"5\" height=\"{}\">{title}</rect>",
            x - 2.5,
            y - LANE_PX / 2.0,
            LANE_PX
        ),
        _ => format!("<circle class=\"{class}\" cx=\"{x}\" cy=\"{y}\" r=\"3\">{title}</circle>"),
    };
    out.push_str(&shape);
    if mark.flagged {
        let _ = write!(
            out,
            "<circle class=\"violation\" cx=\"{x}\" cy=\"{y}\" r=\"7\">{title}</circle>"
        );
    }
}

/// Lanes in a fixed order: the producer, consumer incarnations, the coordinator, the
/// compensator, then the nodes faults hit.
fn lanes(marks: &[Mark]) -> Vec<String> {
    let names: BTreeSet<&str> = marks.iter().map(|m| m.lane.as_str()).collect();
    let rank = |name: &str| match name {
        "producer" => 0,
        name if name.starts_with('c') && name.contains('#') => 1,
        "coordinator" => 2,
        "dead letters" => 3,
        name if name.starts_with("compensator") => 4,
        _ => 5,
    };
    let mut lanes: Vec<String> = names.into_iter().map(str::to_owned).collect();
    lanes.sort_by_key(|name| rank(name));
    lanes
}

fn mark(at_ms: f64, step: &Step, tokens: &BTreeSet<String>) -> Mark {
    let (lane, glyph, keys): (String, Glyph, Vec<String>) = match step {
        Step::Sent {
            event_id,
            acknowledged,
            ..
        } => {
            let glyph = if *acknowledged {
                Glyph::Send
            } else {
                Glyph::Unacked
            };
            ("producer".into(), glyph, event_keys(event_id))
        }
        Step::Polled {
            member,
            partition,
            offset,
            ..
        } => (
            member.clone(),
            Glyph::Poll,
            vec![format!("p{partition}@{offset}")],
        ),
        Step::Stored {
            member,
            event_id,
            applied,
        } => {
            let glyph = if *applied {
                Glyph::Applied
            } else {
                Glyph::Duplicate
            };
            (member.clone(), glyph, event_keys(event_id))
        }
        Step::Assigned { member, .. } => (member.clone(), Glyph::Assign, Vec::new()),
        Step::Revoked { member, .. } => (member.clone(), Glyph::Revoke, Vec::new()),
        Step::CommitSent {
            member,
            partition,
            offset,
        } => (
            member.clone(),
            Glyph::Commit,
            vec![format!("p{partition}={offset}")],
        ),
        Step::Committed {
            partition, offset, ..
        } => (
            "coordinator".into(),
            Glyph::Stored,
            vec![format!("p{partition}={offset}")],
        ),
        Step::Fault { description } => (fault_lane(description), Glyph::Fault, Vec::new()),
        Step::DeadLettered { partition, offset } => (
            "dead letters".into(),
            Glyph::DeadLetter,
            vec![format!("p{partition}@{offset}")],
        ),
    };
    Mark {
        at_ms,
        lane,
        glyph,
        label: describe(step),
        flagged: keys.iter().any(|key| tokens.contains(key)),
    }
}

/// An event id and its order id (`o3-7-5` belongs to order `o3-7`): violations name either.
fn event_keys(event_id: &str) -> Vec<String> {
    let mut keys = vec![event_id.to_owned()];
    if let Some((order, _)) = event_id.rsplit_once('-') {
        keys.push(order.to_owned());
    }
    keys
}

/// A fault line of the report (`t=   12.000ms kill broker-0`) as a mark on its node's lane.
fn fault_mark(line: &str) -> Option<Mark> {
    let rest = line.trim_start().strip_prefix("t=")?;
    let (time, description) = rest.split_once("ms ")?;
    let at_ms: f64 = time.trim().parse().ok()?;
    Some(Mark {
        at_ms,
        lane: fault_lane(description),
        glyph: Glyph::Fault,
        label: description.to_owned(),
        flagged: false,
    })
}

/// The node a fault description names, or `cluster`.
fn fault_lane(description: &str) -> String {
    let lower = description.to_lowercase().replace(['(', ')'], "-");
    for node in ["broker-", "consumer-", "compensator"] {
        if let Some(at) = lower.find(node) {
            let digits: String = lower[at + node.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return format!("{node}{digits}");
        }
    }
    for node in ["controller", "coordinator", "redis", "postgres"] {
        if lower.contains(node) {
            return node.into();
        }
    }
    "cluster".into()
}

/// The words of the violations' details that can name a step: event and order ids
/// (`o1-12/created/` names order `o1-12`), `p2@17` and `p2=17`.
fn violation_tokens(violations: &[Violation]) -> BTreeSet<String> {
    let mut tokens = BTreeSet::new();
    for violation in violations {
        for word in violation
            .detail
            .split(|c: char| c.is_whitespace() || ",;:()[]".contains(c))
        {
            let word = word.split('/').next().unwrap_or(word);
            if !word.is_empty() {
                tokens.insert(word.to_owned());
            }
        }
    }
    tokens
}

/// `text` safe inside HTML text and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font:13px sans-serif;margin:16px}code{background:#eee;padding:2px 4px}\
.world{color:#555}.pass{color:#060}.violations{color:#b00}.legend span{margin-right:14px}\
.lane-bg{fill:#f7f7f7;stroke:#ddd}.tick{stroke:#ddd;fill:#777;font-size:10px}\
.send{fill:#888}.unacked{fill:#f0a}.poll{fill:#99b}.applied{fill:#2a2}.duplicate{fill:#e90}\
.assign{fill:#26f}.revoke{fill:#a2f}.commit{fill:#26f}.stored{fill:#036}.dead-letter{fill:#000}\
.fault{fill:#d00;opacity:.7}.violation{fill:none;stroke:#f00;stroke-width:2}";

const LEGEND: &str = "<p class=\"legend\"><span style=\"color:#888\">&#9679; sent</span>\
<span style=\"color:#f0a\">&#9679; unacknowledged</span><span style=\"color:#99b\">| poll</span>\
<span style=\"color:#2a2\">&#9679; applied</span><span style=\"color:#e90\">&#9679; duplicate</span>\
<span style=\"color:#26f\">&#9679; assigned | commit sent</span><span style=\"color:#a2f\">&#9679; revoked</span>\
<span style=\"color:#036\">&#9679; commit stored</span><span>&#9679; dead letter</span>\
<span style=\"color:#d00\">&#9646; fault</span><span style=\"color:#f00\">&#9711; named by a violation</span></p>";

/// Counts what the browser laid out: lanes and violation markers with a non-empty box.
const CHECK_SCRIPT: &str = "<script>addEventListener('load',function(){\
var drawn=function(s){return Array.prototype.filter.call(document.querySelectorAll(s),\
function(e){var b=e.getBBox();return b.width>0&&b.height>0}).length};\
var r=document.createElement('div');r.id='rendered';\
r.setAttribute('data-lanes',drawn('.lane'));r.setAttribute('data-violations',drawn('circle.violation'));\
r.setAttribute('data-marks',drawn('svg rect,svg circle'));document.body.appendChild(r)});</script>";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Invariant;

    fn step_polled(member: &str, partition: i32, offset: i64) -> Step {
        Step::Polled {
            member: member.into(),
            partition,
            offset,
            digest: 0,
        }
    }

    /// Goal: each process gets its lane, faults land on the node they name, and only the
    /// steps a violation names are ringed. Method: a small history with one doubled order.
    #[test]
    fn lanes_per_process_and_rings_on_what_violations_name() {
        let steps = vec![
            (
                1,
                Step::Sent {
                    event_id: "o1-2-0".into(),
                    acknowledged: true,
                    delivered: Some((0, 7)),
                },
            ),
            (5, step_polled("c0#1", 0, 7)),
            (
                6,
                Step::Stored {
                    member: "c0#1".into(),
                    event_id: "o1-2-0".into(),
                    applied: true,
                },
            ),
            (
                7,
                Step::Stored {
                    member: "c1#1".into(),
                    event_id: "o1-3-0".into(),
                    applied: true,
                },
            ),
            (
                9,
                Step::Fault {
                    description: "clog Broker(2)".into(),
                },
            ),
        ];
        let faults = vec!["t=    8.000ms kill consumer-1".to_owned()];
        let violations = vec![Violation {
            invariant: Invariant::Duplicate,
            detail: "1 business keys applied more than once: o1-2/created/ x2".into(),
        }];
        let page = Page {
            title: "seed 1",
            replay: "cargo sim --seed 1",
            world: "brokers=3",
            virtual_ms: 10,
            steps: &steps,
            faults: &faults,
            violations: &violations,
        };
        let html = render(&page);
        for lane in ["producer", "c0#1", "c1#1", "broker-2", "consumer-1"] {
            assert!(
                html.contains(&format!("data-lane=\"{lane}\"")),
                "no lane {lane}"
            );
        }
        // The send and the apply of o1-2 are ringed; o1-3 and the poll are not.
        assert_eq!(html.matches("class=\"violation\"").count(), 2, "{html}");
        assert!(html.contains("<b>duplicate</b>"), "{html}");
        assert!(html.contains("cargo sim --seed 1"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
