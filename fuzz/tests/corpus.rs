//! Each target's committed corpus replayed, then mutated for
//! `LOOM_FUZZ_SECONDS` (default 2) with a seed from `LOOM_FUZZ_SEED` or the
//! clock. A failing input is saved under the test's temp dir and printed; add
//! it to `fuzz/corpus/TARGET/` once fixed.

use std::time::Duration;

fn fuzz(name: &str) {
    let Some(target) = loom_fuzz::find(name) else {
        panic!("no target {name}");
    };
    let seed = loom_fuzz::seed_from_env();
    let options = loom_fuzz::RunOptions {
        duration: Duration::from_secs_f64(loom_fuzz::seconds_from_env()),
        seed,
        save_crashes: Some(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("loom-fuzz")
                .join(name),
        ),
        corpus: None,
    };
    let outcome = match loom_fuzz::run(&target, &options) {
        Ok(outcome) => outcome,
        Err(e) => panic!("cannot read the corpus of {name}: {e}"),
    };
    println!(
        "{name}: seed {seed}, {} corpus files, {} executions in {:.1} s ({:.0}/s)",
        outcome.replayed,
        outcome.executions,
        outcome.elapsed.as_secs_f64(),
        outcome.rate()
    );
    assert!(outcome.replayed > 0, "{name} has no corpus");
    let failures: Vec<String> = outcome.failures.iter().map(ToString::to_string).collect();
    assert!(
        failures.is_empty(),
        "{name} (seed {seed}) failed on {} inputs:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn api_body() {
    fuzz("api_body");
}

#[test]
fn api_patch() {
    fuzz("api_patch");
}

#[test]
fn api_list() {
    fuzz("api_list");
}

#[test]
fn api_delete() {
    fuzz("api_delete");
}

#[test]
fn label_selector() {
    fuzz("label_selector");
}

#[test]
fn field_selector() {
    fuzz("field_selector");
}

#[test]
fn quantity() {
    fuzz("quantity");
}

#[test]
fn duration() {
    fuzz("duration");
}

#[test]
fn manifest() {
    fuzz("manifest");
}

#[test]
fn image_layer() {
    fuzz("image_layer");
}

#[test]
fn image_layout() {
    fuzz("image_layout");
}

#[test]
fn nodelet_state() {
    fuzz("nodelet_state");
}

#[test]
fn every_target_has_a_test() {
    let tested = [
        "api_body",
        "api_patch",
        "api_list",
        "api_delete",
        "label_selector",
        "field_selector",
        "quantity",
        "duration",
        "manifest",
        "image_layer",
        "image_layout",
        "nodelet_state",
    ];
    for target in loom_fuzz::all() {
        assert!(tested.contains(&target.name), "{} has no test", target.name);
    }
}
