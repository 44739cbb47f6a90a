//! Every line of the labelled corpus (AUTO_MODE.md's examples, grown with cases of each rule
//! for both decisions).

use stigmer_automode::{Mode, Policy, classify};

#[test]
fn every_corpus_line_is_decided_as_labelled() {
    let corpus = include_str!("auto-mode-corpus.tsv");
    let policy = Policy::builtin().with_workdir(std::path::Path::new("/home/dev/project"));
    let mut failures = Vec::new();
    let mut count = 0;
    for line in corpus.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (command, expected) = line.rsplit_once('\t').expect("command<TAB>expected");
        let expected = match expected.trim() {
            "local" => Mode::Local,
            "sandbox" => Mode::Sandbox,
            other => panic!("bad label {other:?}"),
        };
        count += 1;
        let d = classify(command, &policy, false);
        if d.decision != expected {
            failures.push(format!(
                "{command:?}: expected {expected}, got {} ({}; {})",
                d.decision, d.rule, d.reason
            ));
        }
    }
    assert!(count >= 180, "the corpus was read ({count} lines)");
    assert!(
        failures.is_empty(),
        "{} of {count} wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
