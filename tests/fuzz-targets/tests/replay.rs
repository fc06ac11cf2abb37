//! Every stored fuzz input through its target, on the stable toolchain:
//! the corpora the long runs built (`fuzz/corpus/<target>`) and every
//! input that once crashed a target (`fuzz/regressions/<target>`). A
//! regression input that panics again fails here.

use std::path::Path;

#[test]
fn every_stored_input_runs_through_its_target_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut ran = 0;
    for (name, target) in vitals_fuzz_targets::TARGETS {
        let mut inputs = 0;
        for kind in ["corpus", "regressions"] {
            let dir = root.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let path = e.expect("entry").path();
                let data = std::fs::read(&path).expect("read input");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "{name}: no stored inputs in fuzz/corpus/{name}");
        ran += inputs;
    }
    println!(
        "{ran} stored inputs ran through {} targets",
        vitals_fuzz_targets::TARGETS.len()
    );
}
