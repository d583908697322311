//! The multi-seed runner shared by the consensus batteries: which seeds to
//! run (`CONSENSUS_SEED`, `CONSENSUS_SEEDS`), running a scenario over them
//! with a one-line replay command per failing seed, and finding the first
//! failing seed (for negative controls, which must fail).
#![allow(unreachable_pub, dead_code)]

/// The seeds to run: `CONSENSUS_SEED=n` for one, `CONSENSUS_SEEDS=n` for
/// the first n (default 16).
pub fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("CONSENSUS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("CONSENSUS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    (1..=n).collect()
}

/// Runs `scenario` for every seed; panics listing the failing seeds, each
/// with its replay command.
pub fn run_seeds(test_file: &str, name: &str, scenario: impl Fn(u64) -> Result<(), String>) {
    let mut failures = Vec::new();
    for seed in seeds() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(seed)))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into()))
            });
        if let Err(e) = result {
            failures.push(format!(
                "scenario {name} seed {seed}: {e}\n  replay: CONSENSUS_SEED={seed} cargo test --test {test_file} {name} -- --exact"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `scenario` over the seeds and returns the first failure, if any
/// (for negative controls, which must fail).
pub fn first_failure(scenario: impl Fn(u64) -> Result<(), String>) -> Option<(u64, String)> {
    seeds().into_iter().find_map(|seed| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(seed)))
            .unwrap_or_else(|p| {
                Err(p
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into()))
            });
        result.err().map(|e| (seed, e))
    })
}
