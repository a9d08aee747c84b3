//! Fuzzing the manifest parser (`make fuzz`; `make test` runs it with a few cases): whatever
//! it is given — arbitrary bytes, YAML-looking text, the repository's manifests mutated,
//! generated manifests of every kind damaged in structure and in text — it never panics,
//! stays within bounded memory, and every error it returns is located (file, line, column).
//! The generated manifests are mostly valid and refer to one another, so many get past
//! parsing into validation and the cross-object checks (`structured_manifests_reach_deep`
//! shows how many).

#[path = "support/fuzz.rs"]
mod fuzz;
#[path = "support/manifests.rs"]
mod manifests;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use topo_schema::api::SourceFile;
use topo_schema::manifest::{check_apply, parse_file, parse_files_lenient};

const EXAMPLES: [&str; 10] = [
    include_str!("../../manifests/examples/basic.yaml"),
    include_str!("../../manifests/examples/explicit.yaml"),
    include_str!("../../manifests/examples/links.json"),
    include_str!("../../manifests/demo.yaml"),
    include_str!("../../manifests/seeds/ambassador.yaml"),
    include_str!("../../manifests/seeds/docker-links.yaml"),
    include_str!("../../manifests/seeds/geard.yaml"),
    include_str!("../../manifests/seeds/ovs-gre.yaml"),
    include_str!("../../manifests/seeds/per-host-subnets.yaml"),
    include_str!("../../manifests/seeds/pipework.yaml"),
];

const FIELDS: [&str; 6] = [
    "",
    "spec",
    "spec.networks[0].ip",
    "metadata.labels[\"a.b\"]",
    "x[",
    "]]..[",
];

/// How far a manifest got.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    /// Parsing refused it (every error located).
    ParseError,
    /// Parsed and valid on its own; the cross-object checks found problems.
    CrossObjectErrors,
    /// Parsed, valid, consistent.
    Valid,
}

/// Parses as YAML and as JSON and, when that works, runs everything else the controller runs
/// on the result; checks every error is located.
fn exercise(content: &str) -> Result<Reached, String> {
    let reached = match parse_file("fuzz.yaml", content) {
        Ok(docs) => {
            for d in &docs {
                for f in FIELDS {
                    let (line, column) = d.locate(f);
                    if line < 1 || column < 1 {
                        return Err(format!("{f:?} located at {line}:{column}"));
                    }
                }
            }
            if check_apply(&docs, &[]).is_empty() {
                Reached::Valid
            } else {
                Reached::CrossObjectErrors
            }
        }
        Err(causes) => {
            if causes.is_empty() {
                return Err("refused without a cause".into());
            }
            for c in causes {
                let located = c.file.as_deref() == Some("fuzz.yaml")
                    && c.line.is_some_and(|l| l >= 1)
                    && c.column.is_some_and(|l| l >= 1)
                    && !c.message.is_empty();
                if !located {
                    return Err(format!("unlocated or empty: {c:?}"));
                }
            }
            Reached::ParseError
        }
    };
    let _ = parse_file("fuzz.json", content);
    // As an apply sends it: with another file, leniently.
    let files = [
        SourceFile {
            name: "a.yaml".into(),
            content: content.to_string(),
        },
        SourceFile {
            name: "b.yaml".into(),
            content: EXAMPLES[0].to_string(),
        },
    ];
    let lenient = parse_files_lenient(&files);
    if lenient.complete {
        let _ = check_apply(&lenient.docs, &[]);
    }
    Ok(reached)
}

#[test]
fn arbitrary_bytes() {
    fuzz::fuzz(
        "manifest/arbitrary-bytes",
        || prop::collection::vec(any::<u8>(), 0..2048),
        |bytes| exercise(&String::from_utf8_lossy(&bytes)).map(drop),
    );
}

#[test]
fn yaml_looking_text() {
    fuzz::fuzz(
        "manifest/yaml-looking-text",
        || "[a-zA-Z0-9:{}\\[\\],#'\"&*!|>%?@` \n\t.\\-]{0,400}",
        |s| exercise(&s).map(drop),
    );
}

#[test]
fn mutated_repository_manifests() {
    fuzz::fuzz(
        "manifest/mutated-repository-manifests",
        || {
            (
                0usize..EXAMPLES.len(),
                prop::collection::vec(manifests::mutation(), 1..6),
            )
        },
        |(which, ms)| {
            let text = ms
                .iter()
                .fold(EXAMPLES[which].to_string(), |t, m| manifests::mutate(&t, m));
            exercise(&text).map(drop)
        },
    );
}

#[test]
fn generated_manifests_damaged() {
    fuzz::fuzz(
        "manifest/generated-damaged",
        manifests::mutated_manifest,
        |text| exercise(&text).map(drop),
    );
}

/// The generated manifests are not noise: without text damage, many parse, many of those
/// are valid on their own, and some are consistent as a whole.
#[test]
fn structured_manifests_reach_deep() {
    fuzz::on_big_stack(reach_deep);
}

fn reach_deep() {
    let mut runner = TestRunner::deterministic();
    let strategy = manifests::manifest();
    let (mut parsed, mut valid, total) = (0, 0, 400);
    for _ in 0..total {
        let text = strategy
            .new_tree(&mut runner)
            .expect("a manifest")
            .current();
        match exercise(&text) {
            Ok(Reached::Valid) => {
                parsed += 1;
                valid += 1;
            }
            Ok(Reached::CrossObjectErrors) => parsed += 1,
            Ok(Reached::ParseError) => {}
            Err(e) => panic!("{e}\n{text}"),
        }
    }
    eprintln!("structured manifests: {parsed}/{total} parse, {valid}/{total} valid as a whole");
    assert!(parsed >= total / 20, "only {parsed} of {total} parse");
    assert!(valid >= 1, "none is valid as a whole");
}

#[test]
fn deep_nesting_and_aliases() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    exercise(&deep).unwrap();
    let deep_map = format!("a: {}1{}", "{b: ".repeat(5_000), "}".repeat(5_000));
    exercise(&deep_map).unwrap();
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nkind: Node\n";
    exercise(laughs).unwrap();
    let peak = fuzz::peak_rss_mib();
    assert!(peak < fuzz::MAX_PEAK_RSS_MIB, "peak RSS {peak} MiB");
}
