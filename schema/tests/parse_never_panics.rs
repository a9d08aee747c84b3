//! `parse_file` never panics, whatever it is given, and every error it returns is located.

use proptest::prelude::*;
use topo_schema::manifest::{check_apply, parse_file};

const EXAMPLES: [&str; 3] = [
    include_str!("../../manifests/examples/basic.yaml"),
    include_str!("../../manifests/examples/explicit.yaml"),
    include_str!("../../manifests/examples/links.json"),
];

/// Parses and, when that works, runs everything else a caller would run on the result.
fn exercise(content: &str, fields: &[String]) {
    match parse_file("fuzz.yaml", content) {
        Ok(docs) => {
            for d in &docs {
                for f in fields {
                    let (line, column) = d.locate(f);
                    assert!(line >= 1 && column >= 1);
                }
            }
            let _ = check_apply(&docs, &[]);
        }
        Err(causes) => {
            assert!(!causes.is_empty());
            for c in causes {
                assert_eq!(c.file.as_deref(), Some("fuzz.yaml"), "{c}");
                assert!(c.line.is_some_and(|l| l >= 1), "unlocated: {c}");
                assert!(c.column.is_some_and(|l| l >= 1), "unlocated: {c}");
                assert!(!c.message.is_empty());
            }
        }
    }
    let _ = parse_file("fuzz.json", content);
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, ch: char },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippet = prop_oneof![
        Just(": ".to_string()),
        Just("\n---\n".to_string()),
        Just("- ".to_string()),
        Just("{".to_string()),
        Just("]".to_string()),
        Just("\t".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("? ".to_string()),
        Just("\"".to_string()),
        Just("~".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\u{feff}".to_string()),
        Just("é".to_string()),
        "[ -~]{0,12}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), snippet).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), any::<char>()).prop_map(|(at, ch)| Mutation::Replace { at, ch }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

fn apply(content: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = content.chars().collect();
    let n = chars.len().max(1);
    match m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(chars.len());
            chars.drain(at.min(end)..end);
            chars.into_iter().collect()
        }
        Mutation::Insert { at, text } => {
            let at = at % (chars.len() + 1);
            chars.splice(at..at, text.chars());
            chars.into_iter().collect()
        }
        Mutation::Replace { at, ch } => {
            if !chars.is_empty() {
                let i = at % chars.len();
                chars[i] = *ch;
            }
            chars.into_iter().collect()
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = content.split('\n').collect();
            let i = line % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = content.split('\n').collect();
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.join("\n")
        }
    }
}

const FIELDS: [&str; 6] = [
    "",
    "spec",
    "spec.networks[0].ip",
    "metadata.labels[\"a.b\"]",
    "x[",
    "]]..[",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(s in any::<String>()) {
        exercise(&s, &[]);
    }

    #[test]
    fn yaml_looking_strings(s in "[a-zA-Z0-9:{}\\[\\],#'\"&*!|>%?@` \n\t.\\-]{0,300}") {
        exercise(&s, &FIELDS.map(String::from));
    }

    #[test]
    fn mutated_examples(which in 0usize..EXAMPLES.len(), ms in proptest::collection::vec(mutation(), 1..6)) {
        let mut content = EXAMPLES[which].to_string();
        for m in &ms {
            content = apply(&content, m);
        }
        exercise(&content, &FIELDS.map(String::from));
    }
}

#[test]
fn deep_nesting_and_aliases() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    exercise(&deep, &[]);
    let deep_map = format!("a: {}1{}", "{b: ".repeat(5_000), "}".repeat(5_000));
    exercise(&deep_map, &[]);
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nkind: Node\n";
    exercise(laughs, &[]);
}
