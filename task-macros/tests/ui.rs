//! Compile tests of `#[task]`: `ui/pass` must compile (without warnings) and
//! run; every `ui/fail` case must fail with exactly the errors in its
//! `.stderr` snapshot. Regenerate snapshots with
//! `TRYBUILD=overwrite cargo test -p task-macros --test ui`, then read them.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
