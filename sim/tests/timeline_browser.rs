//! The timeline and explorer pages in a real headless browser (Debian's `chromium`, which
//! `scripts/services-up --packages` installs): it loads, lays out a lane per process and a
//! ring per step a violation names, and a screenshot is saved. A missing browser is a
//! failure, not a skip.
#![cfg(madsim)]

use holdfast::testkit::planted::PlantedBug;
use holdfast_sim::params::{Overrides, RunParams, Size};
use holdfast_sim::report;
use holdfast_sim::runner::run;
use holdfast_sim::scenario::Scenario;
use holdfast_sim::sweep::{execute, plan};
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium(args: &[&str], page: &Path) -> String {
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "chromium does not run ({error}): install it with scripts/services-up --packages"
            )
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `name="..."` in the browser's `<div id="rendered" ...>`.
fn rendered(dom: &str, name: &str) -> usize {
    let div = dom
        .split("<div id=\"rendered\"")
        .nth(1)
        .unwrap_or_else(|| panic!("the page's layout check did not run:\n{dom}"));
    let value = div
        .split(&format!("{name}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {name} in the layout check"));
    value.parse().unwrap_or_else(|_| panic!("{name}={value}"))
}

/// Goal: a failing run's timeline shows every process and the violation where it happened,
/// in a browser. Method: a seed of the planted missing-unique-key bug (it applies events
/// twice); the browser lays out as many lanes and rings as the page holds, more than one
/// consumer lane, at least one ring; a screenshot is written.
#[test]
fn a_failing_run_shows_its_lanes_and_violations_in_a_browser() {
    let params =
        RunParams::derive_sized(1, Scenario::Planted(PlantedBug::NoUniqueKey), Size::Mixed);
    let outcome = run(&params);
    assert!(
        !outcome.verdict.passed(),
        "seed 1 of the planted bug passed"
    );
    let html = report::timeline(&outcome);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let page = dir.join("timeline-seed-1.html");
    std::fs::write(&page, &html).expect("the page is written");
    let dom = chromium(&["--dump-dom"], &page);
    let lanes = html.matches("class=\"lane\"").count();
    // Consumer incarnations are named `cN#I`.
    let consumer_lanes = html
        .split("data-lane=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|lane| lane.starts_with('c') && lane.contains('#'))
        .count();
    let rings = html.matches("class=\"violation\"").count();
    assert!(
        consumer_lanes >= 2 && rings >= 1,
        "{consumer_lanes} consumer lanes, {rings} rings"
    );
    assert_eq!(rendered(&dom, "data-lanes"), lanes, "lanes laid out");
    assert_eq!(rendered(&dom, "data-violations"), rings, "rings laid out");
    assert!(dom.contains("violation-detail"), "no violation listed");
    let screenshot = dir.join("timeline-seed-1.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &[
            "--window-size=1600,1000",
            &format!("--screenshot={}", screenshot.display()),
        ],
        &page,
    );
    let size = std::fs::metadata(&screenshot).map_or(0, |m| m.len());
    assert!(size > 10_000, "screenshot of {size} bytes");
}

/// Goal: a sweep's explorer page shows one matrix row per scenario in a browser, with the
/// flagged seeds' replay commands. Method: a small sweep over every scenario; the browser
/// lays out as many rows as scenarios were planned.
#[test]
fn a_sweep_page_shows_every_scenario_in_a_browser() {
    let planned = Scenario::all();
    let runs = plan(
        &planned,
        2 * planned.len() as u64,
        1,
        (0, 1),
        Overrides::default(),
        Size::Mixed,
    );
    let results = execute(runs, 2).expect("the sweep starts its threads");
    let html = holdfast_sim::explorer_page::render(&planned, &results, 1.0);
    let page = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explorer.html");
    std::fs::write(&page, &html).expect("the page is written");
    let dom = chromium(&["--dump-dom"], &page);
    assert_eq!(
        rendered(&dom, "data-rows"),
        planned.len(),
        "matrix rows laid out"
    );
    assert!(
        dom.contains("--html timeline.html"),
        "no replay command listed"
    );
}
