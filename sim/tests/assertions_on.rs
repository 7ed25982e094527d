//! The simulated build runs with every debug assertion and overflow check compiled in (the
//! `sim` profile that `cargo sim` and `cargo stest` use): the invariants the pipeline, the
//! tracker and the merge assert in code are checked in every simulated history.
#![cfg(madsim)]

#[test]
fn debug_assertions_are_compiled_into_the_simulated_build() {
    // Read through black_box so the check happens at run time, in the build under test.
    assert!(
        std::hint::black_box(cfg!(debug_assertions)),
        "the simulator was built without debug assertions: build it with `--profile sim`"
    );
}

#[test]
#[should_panic(expected = "overflow")]
fn overflow_checks_are_compiled_into_the_simulated_build() {
    let max = std::hint::black_box(i64::MAX);
    let _ = std::hint::black_box(max + 1);
}
