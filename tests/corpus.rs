//! The template corpus: each `tests/corpus/*.txt` holds templates and a data
//! sequence. Every step is checked against all oracles (see `common::run`)
//! and the emitted update stream is snapshotted.

mod common;

use statetemplate::FragmentEngine;

#[test]
fn corpus() {
    insta::glob!("corpus/*.txt", |path| {
        let case = common::load_case(path);
        let engine = FragmentEngine::new(common::env_for(&case));
        let transcript = common::run(&engine, &case, &case.steps)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        insta::assert_snapshot!(transcript);
    });
}
