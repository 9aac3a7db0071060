//! `#[derive(Resource)]` in a user's crate: misuses fail to compile with errors that point at
//! the mistake, and correct uses compile under `#![deny(missing_docs, warnings)]`.
//!
//! Regenerate the expected errors with
//! `TRYBUILD=overwrite cargo test -p loom-derive --test compile_fail`.

#[test]
fn misuses_are_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

#[test]
fn generated_items_are_documented_and_warning_free() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
}
