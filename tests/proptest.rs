//! Random data sequences over the corpus: after every step, all oracles of
//! `common::run` hold (page == fresh render == plain minijinja without
//! anchors == wire client == seed updates applied to the previous HTML; a
//! step minijinja cannot render fails in the engine too and changes
//! nothing). The same generator feeds the JS client's model in Node.
//!
//! Mutations follow the shapes the case's own steps show, and go past them:
//! list items are inserted (into empty lists too, from items seen anywhere
//! in the case), removed, swapped, edited, and sometimes reuse an id already
//! in the list; lists are emptied and reversed; object keys are added and
//! removed; scalars change value and type (string, number, bool, null).
//!
//! Failing inputs are kept in `tests/proptest.regressions` and re-run first.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value as Json, json};
use statetemplate::FragmentEngine;

/// What the recorded steps of a case show at each place, by a signature
/// that drops list indices (`todos.[].text`): items seen in lists, and
/// values seen under object keys.
#[derive(Default)]
struct Shapes {
    items: BTreeMap<String, Vec<Json>>,
    keys: BTreeMap<String, Vec<(String, Json)>>,
}

impl Shapes {
    fn of(steps: &[Json]) -> Shapes {
        let mut s = Shapes::default();
        for step in steps {
            s.collect(step, String::new());
        }
        s
    }

    fn collect(&mut self, v: &Json, sig: String) {
        match v {
            Json::Array(a) => {
                let inner = format!("{sig}.[]");
                for item in a {
                    self.items
                        .entry(sig.clone())
                        .or_default()
                        .push(item.clone());
                    self.collect(item, inner.clone());
                }
            }
            Json::Object(m) => {
                for (k, x) in m {
                    self.keys
                        .entry(sig.clone())
                        .or_default()
                        .push((k.clone(), x.clone()));
                    self.collect(x, format!("{sig}.{k}"));
                }
            }
            _ => {}
        }
    }
}

struct Case {
    case: common::Case,
    engine: FragmentEngine,
    shapes: Shapes,
    name: String,
}

fn cases() -> &'static Vec<Case> {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let all: Vec<Case> = files
            .iter()
            .map(|p| {
                let case = common::load_case(p);
                Case {
                    engine: FragmentEngine::new(common::env_for(&case)),
                    shapes: Shapes::of(&case.steps),
                    name: p.file_stem().unwrap().to_string_lossy().into_owned(),
                    case,
                }
            })
            .collect();
        assert!(all.len() >= 20, "{} corpus cases", all.len());
        all
    })
}

/// A pseudo-random source (xorshift), so that one `u64` seed replays a
/// whole sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

const STRINGS: [&str; 13] = [
    "",
    "a",
    "b & c",
    "<i>x</i>",
    "\"q\"",
    "r",
    "ünï",
    "admin",
    "user",
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "</textarea>",
    "{{ x }}",
];

fn scalar(r: &mut Rng) -> Json {
    match r.below(4) {
        0 => json!(STRINGS[r.below(STRINGS.len())]),
        1 => [
            json!(0),
            json!(1),
            json!(7),
            json!(42),
            json!(150),
            json!(-3),
            json!(2.5),
        ][r.below(7)]
        .clone(),
        2 => json!(r.chance(2)),
        _ => Json::Null,
    }
}

struct Mutator<'a> {
    r: Rng,
    shapes: &'a Shapes,
    fresh: u64,
}

impl Mutator<'_> {
    /// Gives `item` a fresh id, or (one time in four) the id of an item
    /// already in `siblings`, so that duplicate keys occur.
    fn identify(&mut self, item: &mut Json, siblings: &[Json]) {
        let Json::Object(o) = item else { return };
        for key in ["id", "slug"] {
            if !o.contains_key(key) {
                continue;
            }
            let taken: Vec<&Json> = siblings.iter().filter_map(|s| s.get(key)).collect();
            let id = if !taken.is_empty() && self.r.chance(4) {
                taken[self.r.below(taken.len())].clone()
            } else {
                self.fresh += 1;
                if self.r.chance(2) {
                    json!(self.fresh)
                } else {
                    json!(format!("n{}", self.fresh))
                }
            };
            o.insert(key.into(), id);
        }
    }

    /// A new item for the list at `sig`: one seen there in any step, or a
    /// sibling, or (when the case never shows one) a synthesized value.
    fn new_item(&mut self, sig: &str, siblings: &[Json]) -> Json {
        let seen = self.shapes.items.get(sig).map(Vec::as_slice).unwrap_or(&[]);
        let mut item = match (seen.is_empty(), siblings.is_empty()) {
            (false, _) if siblings.is_empty() || self.r.chance(2) => {
                seen[self.r.below(seen.len())].clone()
            }
            (_, false) => siblings[self.r.below(siblings.len())].clone(),
            _ if self.r.chance(2) => scalar(&mut self.r),
            _ => json!({"id": 0, "name": "new", "text": "new", "done": false}),
        };
        self.identify(&mut item, siblings);
        if self.r.chance(2) {
            self.mutate(&mut item, &format!("{sig}.[]"));
        }
        item
    }

    /// Applies one random mutation somewhere under `v` (at signature `sig`).
    fn mutate(&mut self, v: &mut Json, sig: &str) {
        // Now and then a value of another type replaces whatever is here.
        if !sig.is_empty() && self.r.chance(12) {
            *v = match self.r.below(4) {
                0 => json!([]),
                1 => json!({}),
                _ => scalar(&mut self.r),
            };
            return;
        }
        match v {
            Json::Object(m) => self.mutate_object(m, sig),
            Json::Array(a) => self.mutate_array(a, sig),
            Json::Bool(b) => {
                if self.r.chance(3) {
                    *v = scalar(&mut self.r);
                } else {
                    *b = !*b;
                }
            }
            _ => *v = scalar(&mut self.r),
        }
    }

    fn mutate_object(&mut self, m: &mut Map<String, Json>, sig: &str) {
        let seen = self.shapes.keys.get(sig).map(Vec::as_slice).unwrap_or(&[]);
        match self.r.below(8) {
            // Remove a key.
            0 if !m.is_empty() => {
                let k = m.keys().nth(self.r.below(m.len())).unwrap().clone();
                m.remove(&k);
            }
            // Add a key: one the case shows here (with a value seen under
            // it), or a new one.
            1 => {
                let (k, x) = if !seen.is_empty() && !self.r.chance(4) {
                    seen[self.r.below(seen.len())].clone()
                } else {
                    (format!("k{}", self.r.below(3)), scalar(&mut self.r))
                };
                m.insert(k, x);
            }
            _ if !m.is_empty() => {
                let k = m.keys().nth(self.r.below(m.len())).unwrap().clone();
                // Ids change rarely: that is a remove plus an insert.
                if (k == "id" || k == "slug") && !self.r.chance(8) {
                    return;
                }
                self.mutate(m.get_mut(&k).unwrap(), &format!("{sig}.{k}"));
            }
            _ => {}
        }
    }

    fn mutate_array(&mut self, a: &mut Vec<Json>, sig: &str) {
        let n = a.len();
        match self.r.below(8) {
            0 if n > 0 => {
                a.remove(self.r.below(n));
            }
            1 if n > 1 => a.swap(self.r.below(n), self.r.below(n)),
            2 | 3 => {
                let item = self.new_item(sig, a);
                let at = self.r.below(n + 1);
                a.insert(at, item);
            }
            4 => a.reverse(),
            5 if self.r.chance(3) => a.clear(),
            _ if n > 0 => {
                let i = self.r.below(n);
                self.mutate(&mut a[i], &format!("{sig}.[]"));
            }
            _ => {
                let item = self.new_item(sig, a);
                a.push(item);
            }
        }
    }
}

/// The data sequence for one generated input: a recorded step, then `len`
/// rounds of one to three mutations, sometimes jumping to another recorded
/// step.
fn sequence(case: &Case, seed: u64, len: usize, start: usize) -> Vec<Json> {
    let steps = &case.case.steps;
    let mut m = Mutator {
        r: Rng(seed | 1),
        shapes: &case.shapes,
        fresh: 1000,
    };
    let mut data = steps[start % steps.len()].clone();
    let mut out = vec![data.clone()];
    for _ in 0..len {
        for _ in 0..(1 + m.r.below(3)) {
            m.mutate(&mut data, "");
        }
        out.push(data.clone());
        if m.r.chance(5) {
            data = steps[m.r.below(steps.len())].clone();
            out.push(data.clone());
        }
    }
    out
}

fn cases_per_run() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases_per_run(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]
    #[test]
    fn random_sequences_converge(case_ix in 0usize..64, seed in any::<u64>(), len in 1usize..8, start in 0usize..8) {
        let all = cases();
        let case = &all[case_ix % all.len()];
        let steps = sequence(case, seed, len, start);
        if let Err(e) = common::run(&case.engine, &case.case, &steps) {
            panic!("{}: {e}\nsteps: {}", case.name, serde_json::to_string(&steps).unwrap());
        }
    }
}

/// The same generator's sequences through the JS client's model (in one
/// Node process): after every frame it holds exactly what `WireClient`
/// holds. A failure prints the seed; `ST_JS_SEED=N` replays that run.
#[test]
fn js_model_follows_random_sequences() {
    let all = cases();
    let base: u64 = std::env::var("ST_JS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let n = (cases_per_run() / 4).max(200) as usize;
    let mut r = Rng(base | 1);
    let mut seqs = Vec::with_capacity(n);
    let mut input = Vec::with_capacity(n);
    for i in 0..n {
        let case = &all[i % all.len()];
        let steps = sequence(case, r.next(), 1 + r.below(7), r.below(8));
        let (frames, html) = common::frames(&case.engine, &steps);
        input.push((format!("{}#{i}", case.name), frames));
        seqs.push((steps, html));
    }
    let results = common::js_model(&input);
    let mut frames = 0;
    for (((name, f), (steps, want)), got) in input.iter().zip(&seqs).zip(&results) {
        let replay = || {
            format!(
                "ST_JS_SEED={base}\nsteps: {}",
                serde_json::to_string(steps).unwrap()
            )
        };
        assert_eq!(
            got["error"],
            Json::Null,
            "{name}: JS model failed\n{}",
            replay()
        );
        let got: Vec<String> = serde_json::from_value(got["html"].clone()).unwrap();
        assert_eq!(got.len(), f.len(), "{name}: one HTML per frame");
        assert_eq!(
            got,
            common::written_out(want),
            "{name}: JS model and WireClient differ\n{}",
            replay()
        );
        frames += f.len();
    }
    assert!(frames >= n, "{frames} frames over {n} sequences");
}

/// The generator does what the module docs promise, so the property test
/// cannot quietly lose its reach: over many sequences it refills empty
/// lists, adds and removes keys, repeats ids and changes scalar types.
#[test]
fn the_generator_reaches_every_kind_of_change() {
    fn walk(v: &Json, f: &mut impl FnMut(&Json)) {
        f(v);
        match v {
            Json::Array(a) => a.iter().for_each(|x| walk(x, f)),
            Json::Object(m) => m.values().for_each(|x| walk(x, f)),
            _ => {}
        }
    }
    fn lists(v: &Json, path: String, out: &mut BTreeMap<String, usize>) {
        match v {
            Json::Array(a) => {
                out.insert(path.clone(), a.len());
            }
            Json::Object(m) => {
                for (k, x) in m {
                    lists(x, format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }
    let (mut refilled, mut dup_ids, mut key_added, mut key_removed, mut retyped) = (0, 0, 0, 0, 0);
    for (i, case) in cases().iter().enumerate() {
        for seed in 0..200u64 {
            let steps = sequence(case, seed * 7919 + i as u64, 6, seed as usize);
            for w in steps.windows(2) {
                let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
                lists(&w[0], String::new(), &mut a);
                lists(&w[1], String::new(), &mut b);
                refilled += a
                    .iter()
                    .filter(|(p, n)| **n == 0 && b.get(*p).is_some_and(|m| *m > 0))
                    .count();
                if let (Json::Object(x), Json::Object(y)) = (&w[0], &w[1]) {
                    key_added += y.keys().filter(|k| !x.contains_key(*k)).count();
                    key_removed += x.keys().filter(|k| !y.contains_key(*k)).count();
                    for (k, v) in x {
                        if let Some(u) = y.get(k) {
                            let kind = |j: &Json| std::mem::discriminant(j);
                            retyped += usize::from(kind(v) != kind(u));
                        }
                    }
                }
                let dups = |j: &Json| {
                    let mut n = 0;
                    walk(j, &mut |v| {
                        if let Json::Array(a) = v {
                            let ids: Vec<String> = a
                                .iter()
                                .filter_map(|x| x.get("id"))
                                .map(|j| j.to_string())
                                .collect();
                            let mut uniq = ids.clone();
                            uniq.sort();
                            uniq.dedup();
                            n += usize::from(uniq.len() < ids.len());
                        }
                    });
                    n
                };
                dup_ids += usize::from(dups(&w[1]) > dups(&w[0]));
            }
        }
    }
    for (what, n) in [
        ("empty lists refilled", refilled),
        ("lists with a repeated id", dup_ids),
        ("keys added", key_added),
        ("keys removed", key_removed),
        ("scalars of another type", retyped),
    ] {
        assert!(n >= 20, "{what}: only {n}");
    }
}
