//! `-o` beyond the built-in formats, and `--sort-by`, as kubectl has them: `jsonpath=`,
//! `jsonpath-file=`, `custom-columns=`, `custom-columns-file=`.
//!
//! Pure but for reading the two `-file=` forms, so `get` (and its `-w`) only pick a
//! [`Printer`] and hand it objects. The templates themselves are [`crate::jsonpath`]'s.

use std::cmp::Ordering;

use serde_json::Value;
use topo_schema::Resource;

use crate::jsonpath::{EvalError, Expr, ParseError, Template};
use crate::output::{Format, render_table};

/// The formats `-o` takes, for `--help` and shell completion.
pub const FORMATS: &[&str] = &[
    "wide",
    "yaml",
    "json",
    "name",
    "jsonpath=",
    "jsonpath-file=",
    "custom-columns=",
    "custom-columns-file=",
];

#[derive(Debug, thiserror::Error)]
pub enum PrinterError {
    #[error(
        "unable to match a printer suitable for the output format {0:?}, allowed formats are: wide, yaml, json, name, jsonpath=TEMPLATE, jsonpath-file=FILE, custom-columns=SPEC, custom-columns-file=FILE"
    )]
    UnknownFormat(String),
    #[error("{0}")]
    Template(#[from] ParseError),
    #[error("{0}")]
    Eval(#[from] EvalError),
    #[error("invalid custom-columns {spec:?}: {why}")]
    Columns { spec: String, why: String },
    #[error("failed to read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("couldn't find any field with path {0:?} in the list of objects")]
    SortFieldAbsent(String),
}

/// One column of `-o custom-columns`.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub header: String,
    pub expr: Expr,
}

/// How `get` prints what it fetched.
#[derive(Debug, Clone, PartialEq)]
pub enum Printer {
    Builtin(Format),
    JsonPath {
        template: Template,
        allow_missing: bool,
    },
    Columns(Vec<Column>),
}

impl Printer {
    /// `-o` as given (None: the default table). `allow_missing`: a template's missing
    /// field prints nothing rather than failing (kubectl's `--allow-missing-template-keys`).
    pub fn parse(output: Option<&str>, allow_missing: bool) -> Result<Printer, PrinterError> {
        let Some(o) = output else {
            return Ok(Printer::Builtin(Format::Table));
        };
        if let Some(f) = Format::parse(o) {
            return Ok(Printer::Builtin(f));
        }
        let (name, arg) = o
            .split_once('=')
            .ok_or_else(|| PrinterError::UnknownFormat(o.to_string()))?;
        let read = |path: &str| {
            std::fs::read_to_string(path).map_err(|source| PrinterError::ReadFile {
                path: path.to_string(),
                source,
            })
        };
        Ok(match name {
            "jsonpath" => Printer::JsonPath {
                template: Template::parse(arg)?,
                allow_missing,
            },
            "jsonpath-file" => Printer::JsonPath {
                template: Template::parse(&read(arg)?)?,
                allow_missing,
            },
            "custom-columns" => Printer::Columns(columns(arg)?),
            "custom-columns-file" => Printer::Columns(columns_file(&read(arg)?)?),
            _ => return Err(PrinterError::UnknownFormat(o.to_string())),
        })
    }
}

/// Splits at top-level commas: a column's path may hold a union (`[0,1]`) or a filter.
fn split_columns(spec: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in spec.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '(' | '{') => depth += 1,
            (None, ']' | ')' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&spec[start..]);
    parts
}

/// `NAME:.metadata.name,NODE:.spec.node`.
pub fn columns(spec: &str) -> Result<Vec<Column>, PrinterError> {
    let bad = |why: String| PrinterError::Columns {
        spec: spec.to_string(),
        why,
    };
    if spec.trim().is_empty() {
        return Err(bad(
            "no columns (expected HEADER:JSONPATH[,HEADER:JSONPATH...])".into(),
        ));
    }
    split_columns(spec)
        .into_iter()
        .map(|part| {
            let (header, path) = part.split_once(':').ok_or_else(|| {
                bad(format!(
                    "{part:?} is not HEADER:JSONPATH (e.g. NAME:.metadata.name)"
                ))
            })?;
            if header.trim().is_empty() {
                return Err(bad(format!("{part:?} has no header")));
            }
            Ok(Column {
                header: header.trim().to_string(),
                expr: Expr::parse_relaxed(path)?,
            })
        })
        .collect()
}

/// kubectl's custom-columns file: a line of headers, then a line of paths, both split at
/// whitespace.
pub fn columns_file(text: &str) -> Result<Vec<Column>, PrinterError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let bad = |why: &str| PrinterError::Columns {
        spec: text.trim().to_string(),
        why: why.to_string(),
    };
    let headers: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad("the file is empty (expected a line of headers and one of paths)"))?
        .split_whitespace()
        .collect();
    let paths: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad("no line of paths under the headers"))?
        .split_whitespace()
        .collect();
    if headers.len() != paths.len() {
        return Err(bad(&format!(
            "{} headers but {} paths",
            headers.len(),
            paths.len()
        )));
    }
    headers
        .into_iter()
        .zip(paths)
        .map(|(h, p)| {
            Ok(Column {
                header: h.to_string(),
                expr: Expr::parse_relaxed(p)?,
            })
        })
        .collect()
}

/// The header of a custom-columns table.
pub fn column_header(cols: &[Column]) -> Vec<String> {
    cols.iter().map(|c| c.header.clone()).collect()
}

/// One object's custom-columns cells: the values a path reaches, comma-separated, or
/// `<none>`.
pub fn column_row(cols: &[Column], object: &Resource) -> Vec<String> {
    let v = object.to_value();
    cols.iter()
        .map(|c| {
            let found = c.expr.find(&v);
            if found.is_empty() {
                "<none>".to_string()
            } else {
                found
                    .into_iter()
                    .map(crate::jsonpath::text_of)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        })
        .collect()
}

/// A custom-columns table of `objects`.
pub fn columns_table(cols: &[Column], objects: &[Resource]) -> String {
    let rows: Vec<Vec<String>> = objects.iter().map(|o| column_row(cols, o)).collect();
    render_table(&column_header(cols), &rows, true, &[])
}

/// `--sort-by`: a stable sort on the first value `by` reaches in each object. Objects
/// without it come first, as in kubectl; numbers compare as numbers, strings as strings.
pub fn sort_objects(objects: &mut [Resource], by: &Expr) {
    let mut keyed: Vec<(Option<Value>, Resource)> = objects
        .iter()
        .map(|o| (sort_key(o, by), o.clone()))
        .collect();
    keyed.sort_by(|(a, _), (b, _)| compare_keys(a.as_ref(), b.as_ref()));
    for (slot, (_, o)) in objects.iter_mut().zip(keyed) {
        *slot = o;
    }
}

fn sort_key(o: &Resource, by: &Expr) -> Option<Value> {
    let v = o.to_value();
    by.find(&v).first().map(|x| (*x).clone())
}

/// When no object of a non-empty list has the `--sort-by` field at all, it is most likely
/// a typo: an error, as in kubectl.
pub fn check_sort_field<'a>(
    objects: impl IntoIterator<Item = &'a Resource>,
    by: &Expr,
) -> Result<(), PrinterError> {
    let mut any = false;
    for o in objects {
        any = true;
        if sort_key(o, by).is_some() {
            return Ok(());
        }
    }
    if any {
        Err(PrinterError::SortFieldAbsent(by.source().to_string()))
    } else {
        Ok(())
    }
}

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Bool(_)) => 1,
        Some(Value::Number(_)) => 2,
        Some(Value::String(_)) => 3,
        Some(_) => 4,
    }
}

fn compare_keys(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(x), Some(y)) if rank(a) == rank(b) => x.to_string().cmp(&y.to_string()),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::{container, network};
    use chrono::Utc;

    fn named(objs: &[Resource]) -> Vec<&str> {
        objs.iter().map(|o| o.name()).collect()
    }

    #[test]
    fn output_flags() {
        assert_eq!(
            Printer::parse(None, true).unwrap(),
            Printer::Builtin(Format::Table)
        );
        assert_eq!(
            Printer::parse(Some("wide"), true).unwrap(),
            Printer::Builtin(Format::Wide)
        );
        assert!(matches!(
            Printer::parse(Some("jsonpath={.kind}"), true).unwrap(),
            Printer::JsonPath { .. }
        ));
        let e = Printer::parse(Some("table"), true).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unable to match a printer suitable for the output format \"table\"")
        );
        let e = Printer::parse(Some("jsonpath={.a[}"), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid jsonpath \"{.a[}\" at character 5: unexpected '}' (expected an index, a slice a:b, a quoted name, * or ?(...))"
        );
        let e = Printer::parse(Some("jsonpath-file=/nonexistent/t"), true).unwrap_err();
        assert!(e.to_string().starts_with("failed to read /nonexistent/t: "));
    }

    #[test]
    fn custom_columns() {
        let cols =
            columns("NAME:.metadata.name,NODE:.spec.node,NETS:.spec.networks[*].network,X:{.nope}")
                .unwrap();
        let now = Utc::now();
        let table = columns_table(&cols, &[container("redis", now)]);
        assert_eq!(
            table,
            "NAME    NODE    NETS      X\nredis   node4   overlay   <none>\n"
        );
        let cols = columns("A:.a[0,1],B:.b").unwrap();
        assert_eq!(cols.len(), 2, "a union's comma is no column separator");
        for (spec, why) in [
            ("", "no columns"),
            ("NAME", "\"NAME\" is not HEADER:JSONPATH"),
            (":.a", "has no header"),
        ] {
            let e = columns(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
        let e = columns("NAME:.metadata[").unwrap_err().to_string();
        assert!(e.contains("at character 10"), "{e}");

        let cols = columns_file("NAME   NODE\n.metadata.name   .spec.node\n").unwrap();
        assert_eq!(column_header(&cols), ["NAME", "NODE"]);
        assert!(
            columns_file("A B\n.a\n")
                .unwrap_err()
                .to_string()
                .contains("2 headers but 1 paths")
        );
    }

    #[test]
    fn sort_by_numbers_strings_and_missing_first() {
        let now = Utc::now();
        let mut objs = vec![
            container("b", now),
            container("a", now),
            container("c", now),
            network("n", now),
        ];
        for (o, n) in objs.iter_mut().zip([10, 9, 100]) {
            if let Resource::Container(c) = o {
                c.status.as_mut().unwrap().restart_count = n;
            }
        }
        sort_objects(
            &mut objs,
            &Expr::parse_relaxed(".status.restartCount").unwrap(),
        );
        assert_eq!(named(&objs), ["n", "a", "b", "c"], "numeric, missing first");
        sort_objects(&mut objs, &Expr::parse_relaxed("{.metadata.name}").unwrap());
        assert_eq!(named(&objs), ["a", "b", "c", "n"]);
        let by = Expr::parse_relaxed(".spec.nope").unwrap();
        let e = check_sort_field(&objs, &by).unwrap_err();
        assert_eq!(
            e.to_string(),
            "couldn't find any field with path \".spec.nope\" in the list of objects"
        );
        let by = Expr::parse_relaxed(".spec.node").unwrap();
        assert!(check_sort_field(&objs, &by).is_ok(), "one object has it");
        assert!(
            check_sort_field(&[], &by).is_ok(),
            "an empty list is no error"
        );
    }
}
