//! Random data sequences over the corpus: after every step, all oracles of
//! `common::run` hold (page == fresh render == plain minijinja without
//! anchors == wire client == seed updates applied to the previous HTML).
//!
//! The data is mutated in the shape of each case's own steps: list items are
//! inserted, removed, swapped and edited; scalars change; booleans flip.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value as Json, json};
use statetemplate::FragmentEngine;

fn cases() -> &'static Vec<(common::Case, FragmentEngine)> {
    static CASES: OnceLock<Vec<(common::Case, FragmentEngine)>> = OnceLock::new();
    CASES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| {
                let c = common::load_case(p);
                let e = FragmentEngine::new(common::env_for(&c));
                (c, e)
            })
            .collect()
    })
}

/// Applies one pseudo-random mutation chosen by `r` to `v`.
fn mutate(v: &mut Json, r: &mut impl FnMut() -> u64, fresh_id: &mut u64) {
    match v {
        Json::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = &keys[(r() as usize) % keys.len()];
            if k == "id" || k == "slug" {
                return;
            }
            mutate(m.get_mut(k).unwrap(), r, fresh_id);
        }
        Json::Array(a) => {
            let n = a.len();
            match r() % 6 {
                0 if n > 0 => {
                    a.remove((r() as usize) % n);
                }
                1 if n > 1 => a.swap((r() as usize) % n, (r() as usize) % n),
                2 if n > 0 => {
                    let i = (r() as usize) % n;
                    let mut item = a[i].clone();
                    *fresh_id += 1;
                    if let Json::Object(o) = &mut item {
                        for key in ["id", "slug"] {
                            if o.contains_key(key) {
                                o.insert(key.into(), json!(format!("n{}", fresh_id)));
                            }
                        }
                    }
                    mutate(&mut item, r, fresh_id);
                    a.insert((r() as usize) % (n + 1), item);
                }
                3 if n > 0 => {
                    let i = (r() as usize) % n;
                    mutate(&mut a[i], r, fresh_id);
                }
                4 => a.reverse(),
                _ if n > 0 => {
                    let i = (r() as usize) % n;
                    mutate(&mut a[i], r, fresh_id);
                }
                _ => {}
            }
        }
        Json::Bool(b) => *b = !*b,
        Json::Number(x) => {
            let choices = [
                json!(0),
                json!(1),
                json!(7),
                json!(42),
                json!(150),
                json!(-3),
                json!(2.5),
            ];
            let _ = x;
            *v = choices[(r() as usize) % choices.len()].clone();
        }
        Json::String(s) => {
            let choices = [
                "", "a", "b & c", "<i>x</i>", "\"q\"", "r", "ünï", "admin", "user",
            ];
            let c = choices[(r() as usize) % choices.len()];
            *s = c.to_owned();
        }
        Json::Null => *v = json!({"name": "n", "admin": true}),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn random_sequences_converge(case_ix in 0usize..64, seed in any::<u64>(), len in 1usize..6, start in 0usize..8) {
        let all = cases();
        let (case, engine) = &all[case_ix % all.len()];
        let mut state = seed | 1;
        let mut r = move || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
        let mut data = case.steps[start % case.steps.len()].clone();
        let mut steps = vec![data.clone()];
        let mut fresh_id = 1000;
        for _ in 0..len {
            for _ in 0..(1 + r() % 3) {
                mutate(&mut data, &mut r, &mut fresh_id);
            }
            steps.push(data.clone());
            // Sometimes jump to another recorded step of the case.
            if r() % 5 == 0 {
                data = case.steps[(r() as usize) % case.steps.len()].clone();
                steps.push(data.clone());
            }
        }
        if let Err(e) = common::run(engine, case, &steps) {
            panic!("case {case_ix}: {e}\nsteps: {}", serde_json::to_string(&steps).unwrap());
        }
    }
}
