//! Manifest files: multi-document YAML, or JSON (one object, a `List` with `items`, or a
//! top-level array), parsed into [`Resource`]s. Every error is an [`api::Cause`] naming the
//! file, the line and column, and the field path; all errors of all documents are returned,
//! not just the first.
//!
//! Each document is deserialized straight from its own text with serde_yaml, so serde's
//! errors carry positions; a locator built from yaml-rust2's events maps field paths back to
//! the line and column of their key, for the errors validation finds later.
//!
//! A document goes through named steps: its header (apiVersion, kind, name) is read first so
//! a wrong kind is reported before its fields are, then the typed parse, then the static
//! validation. serde's messages are reworded for operators by `SerdeError`, one method per
//! kind of message, and the locator is built by `LocatorBuilder`, a stack of the open
//! mappings and sequences.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use serde::de::{self, DeserializeOwned, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use yaml_rust2::parser::{Event, Parser};

use crate::API_VERSION;
use crate::api::{Cause, SourceFile};
use crate::kinds::{Kind, ObjectRef, Resource};
use crate::names::closest;
use crate::validate::{self, FieldError, field_index, field_key};

const KINDS: &str = "Node, Network, Container, Link, Tunnel";

/// A position in a file: 1-based line, 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    const START: Pos = Pos { line: 1, column: 1 };
}

/// One object read from a manifest file.
#[derive(Clone)]
pub struct ParsedDoc {
    pub file: String,
    /// Index of the document in its file (of the YAML documents, or of the JSON items),
    /// counting empty documents too.
    pub doc_index: usize,
    /// The line where the document's content starts.
    pub line: usize,
    pub resource: Resource,
    text: DocText,
}

impl fmt::Debug for ParsedDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedDoc")
            .field("file", &self.file)
            .field("doc_index", &self.doc_index)
            .field("line", &self.line)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

impl ParsedDoc {
    /// Line and column (1-based) of `field` (`spec.networks[0].ip`): of its key, or of the
    /// nearest ancestor the document spells out. `""` is the document itself.
    pub fn locate(&self, field: &str) -> (usize, usize) {
        let p = self.text.locate(field);
        (p.line, p.column)
    }

    pub fn object_ref(&self) -> ObjectRef {
        self.resource.object_ref()
    }

    /// The document's source text.
    pub fn source(&self) -> &str {
        self.text.text()
    }

    /// `err`, located in this document.
    pub fn cause(&self, err: &FieldError) -> Cause {
        let p = self.text.locate(&err.field);
        Cause {
            file: Some(self.file.clone()),
            line: Some(p.line),
            column: Some(p.column),
            object: Some(self.object_ref().to_string()),
            field: (!err.field.is_empty()).then(|| err.field.clone()),
            message: err.message.clone(),
        }
    }
}

/// Turns a cross-object error about `obj` into a Cause located in the document that defines
/// `obj`, or an unlocated one when no document does (an object already stored, or deleted).
pub fn locate_cause(docs: &[ParsedDoc], obj: &ObjectRef, err: &FieldError) -> Cause {
    match docs
        .iter()
        .find(|d| d.resource.kind() == obj.kind && d.resource.name() == obj.name)
    {
        Some(d) => d.cause(err),
        None => Cause {
            file: None,
            line: None,
            column: None,
            object: Some(obj.to_string()),
            field: (!err.field.is_empty()).then(|| err.field.clone()),
            message: err.message.clone(),
        },
    }
}

/// Parses several files as one change: every error of every file, plus any object defined
/// twice (naming both places).
pub fn parse_files(files: &[SourceFile]) -> Result<Vec<ParsedDoc>, Vec<Cause>> {
    let parsed = parse_files_lenient(files);
    if parsed.errors.is_empty() {
        Ok(parsed.docs)
    } else {
        Err(parsed.errors)
    }
}

/// What [`parse_files_lenient`] read.
pub struct Lenient {
    /// Every document that could be read, also those that failed static validation.
    pub docs: Vec<ParsedDoc>,
    pub errors: Vec<Cause>,
    /// Every document could be read (the errors are all of static validation): the
    /// cross-object checks of `docs` then mean something and can be reported together with
    /// `errors`, so one round shows every error.
    pub complete: bool,
}

/// [`parse_files`] that keeps the documents that failed only static validation.
pub fn parse_files_lenient(files: &[SourceFile]) -> Lenient {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut complete = true;
    for f in files {
        let out = parse_output(&f.name, &f.content);
        complete &= out.errors.len() == out.validation_errors;
        docs.extend(out.docs);
        docs.extend(out.invalid);
        errors.extend(out.errors);
    }
    errors.extend(duplicates(&docs));
    Lenient {
        docs,
        errors,
        complete,
    }
}

fn duplicates(docs: &[ParsedDoc]) -> Vec<Cause> {
    let mut seen: HashMap<(Kind, &str), usize> = HashMap::new();
    let mut errors = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        match seen.entry((d.resource.kind(), d.resource.name())) {
            Entry::Vacant(v) => {
                v.insert(i);
            }
            Entry::Occupied(o) => {
                let first = &docs[*o.get()];
                let (l1, c1) = first.locate("metadata.name");
                let (l2, c2) = d.locate("metadata.name");
                errors.push(d.cause(&FieldError::new(
                    "metadata.name",
                    format!(
                        "{} is defined twice: at {}:{l1}:{c1} and at {}:{l2}:{c2} (names are unique per kind)",
                        d.object_ref(),
                        first.file,
                        d.file
                    ),
                )));
            }
        }
    }
    errors
}

/// Cross-object checks of applying `docs` on top of `existing` (the stored objects; those the
/// documents replace are ignored), located in the documents. With `existing` empty the
/// documents are checked as if they were everything.
pub fn check_apply(docs: &[ParsedDoc], existing: &[&Resource]) -> Vec<Cause> {
    let replaced: std::collections::HashSet<(Kind, &str)> = docs
        .iter()
        .map(|d| (d.resource.kind(), d.resource.name()))
        .collect();
    let mut all: Vec<&Resource> = existing
        .iter()
        .copied()
        .filter(|r| !replaced.contains(&(r.kind(), r.name())))
        .collect();
    all.extend(docs.iter().map(|d| &d.resource));
    let changed: Vec<ObjectRef> = docs.iter().map(ParsedDoc::object_ref).collect();
    let by_ref: HashMap<(Kind, &str), &ParsedDoc> = docs
        .iter()
        .map(|d| ((d.resource.kind(), d.resource.name()), d))
        .collect();
    validate::validate_consistency(&all, &changed)
        .into_iter()
        .map(
            |(obj, err)| match by_ref.get(&(obj.kind, obj.name.as_str())) {
                Some(d) => d.cause(&err),
                None => locate_cause(&[], &obj, &err),
            },
        )
        .collect()
}

/// Parses a multi-document YAML (or JSON) file; every error is an api::Cause naming file,
/// line, column and field path. Runs validate_object on each document too.
pub fn parse_file(file: &str, content: &str) -> Result<Vec<ParsedDoc>, Vec<Cause>> {
    let out = parse_output(file, content);
    if out.errors.is_empty() {
        Ok(out.docs)
    } else {
        Err(out.errors)
    }
}

fn parse_output<'a>(file: &'a str, content: &str) -> Output<'a> {
    let source: Arc<str> = Arc::from(content);
    let mut out = Output {
        file,
        docs: Vec::new(),
        invalid: Vec::new(),
        errors: Vec::new(),
        validation_errors: 0,
    };
    match json_items(file, &source) {
        Some(Ok(items)) => {
            for (i, (span, origin)) in items.into_iter().enumerate() {
                parse_doc(
                    &mut out,
                    DocText::new(&source, span, origin),
                    i,
                    Format::Json,
                );
            }
        }
        Some(Err(cause)) => out.errors.push(cause),
        None => {
            for (i, (span, line)) in split_yaml(&source).into_iter().enumerate() {
                let origin = Pos { line, column: 1 };
                parse_doc(
                    &mut out,
                    DocText::new(&source, span, origin),
                    i,
                    Format::Yaml,
                );
            }
        }
    }
    out
}

struct Output<'a> {
    file: &'a str,
    docs: Vec<ParsedDoc>,
    /// Read, but failed static validation.
    invalid: Vec<ParsedDoc>,
    errors: Vec<Cause>,
    /// How many of `errors` are static validation errors of documents in `invalid`.
    validation_errors: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

// ------------------------------------------------------------------ splitting

/// Splits YAML the way kubectl does: a line that starts with `---` followed by nothing but
/// blanks or a comment separates documents. Returns each document's byte range and the line
/// it starts on.
fn split_yaml(content: &str) -> Vec<(Range<usize>, usize)> {
    let mut docs = Vec::new();
    let bom = if content.starts_with('\u{feff}') {
        '\u{feff}'.len_utf8()
    } else {
        0
    };
    let (mut start, mut start_line, mut offset) = (bom, 1, bom);
    for (i, line) in content[bom..].split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = bare.strip_prefix("---") {
            let rest = rest.trim();
            if rest.is_empty() || rest.starts_with('#') {
                docs.push((start..offset, start_line));
                start = offset + line.len();
                start_line = i + 2;
            }
        }
        offset += line.len();
    }
    docs.push((start..content.len(), start_line));
    docs
}

fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// The line of the first content (not blank, not a comment, not `---`) of `text`.
fn first_content_line(text: &str) -> usize {
    text.lines()
        .position(|l| {
            let t = l.trim();
            !(t.is_empty() || t.starts_with('#') || t == "---" || t.starts_with("--- #"))
        })
        .unwrap_or(0)
        + 1
}

#[derive(Deserialize)]
struct JsonProbe {
    #[serde(default)]
    kind: Option<Scalar>,
}

#[derive(Deserialize)]
struct JsonList<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

/// The objects of a JSON file, each as its byte range and starting position; None when the
/// file is not JSON (then it is YAML).
#[allow(clippy::type_complexity)]
fn json_items(file: &str, content: &str) -> Option<Result<Vec<(Range<usize>, Pos)>, Cause>> {
    let trimmed = content.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    let is_json_name = file.to_ascii_lowercase().ends_with(".json");
    if !is_json_name && !trimmed.starts_with(['{', '[']) {
        return None;
    }
    let root: &RawValue = match serde_json::from_str(content) {
        Ok(r) => r,
        Err(e) if is_json_name => {
            let pos = Pos {
                line: e.line().max(1),
                column: e.column().max(1),
            };
            let msg = strip_location(&e.to_string(), Some(pos));
            return Some(Err(Cause {
                file: Some(file.to_string()),
                line: Some(pos.line),
                column: Some(pos.column),
                object: None,
                field: None,
                message: format!("invalid JSON: {msg}"),
            }));
        }
        // `{a: 1}` is YAML that looks like JSON.
        Err(_) => return None,
    };
    let at = |raw: &RawValue| {
        let off = (raw.get().as_ptr() as usize).wrapping_sub(content.as_ptr() as usize);
        if off <= content.len() {
            off..off + raw.get().len()
        } else {
            0..content.len()
        }
    };
    let items: Vec<&RawValue> = if root.get().starts_with('[') {
        match serde_json::from_str::<Vec<&RawValue>>(root.get()) {
            Ok(items) => items,
            Err(_) => vec![root],
        }
    } else {
        let probe = serde_json::from_str::<JsonProbe>(root.get()).ok();
        match probe.and_then(|p| p.kind) {
            Some(Scalar::Str(k)) if k == "List" => {
                match serde_json::from_str::<JsonList>(root.get()) {
                    Ok(list) => list.items,
                    Err(_) => {
                        let (line, column) = line_col(content, at(root).start);
                        return Some(Err(Cause {
                            file: Some(file.to_string()),
                            line: Some(line),
                            column: Some(column),
                            object: None,
                            field: Some("items".into()),
                            message: "a List needs items, a list of objects".into(),
                        }));
                    }
                }
            }
            _ => vec![root],
        }
    };
    // Positions are computed in one pass: the items come in file order.
    let mut cursor = (0usize, Pos::START);
    let mut out = Vec::with_capacity(items.len());
    for raw in items {
        let span = at(raw);
        if span.start < cursor.0 {
            cursor = (0, Pos::START);
        }
        let skipped = &content[cursor.0..span.start];
        let mut pos = cursor.1;
        for ch in skipped.chars() {
            if ch == '\n' {
                pos = Pos {
                    line: pos.line + 1,
                    column: 1,
                };
            } else {
                pos.column += 1;
            }
        }
        cursor = (span.start, pos);
        out.push((span, pos));
    }
    Some(Ok(out))
}

fn line_col(content: &str, offset: usize) -> (usize, usize) {
    let before = content.get(..offset).unwrap_or(content);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ------------------------------------------------------------------ one document

/// A document's text within its file, and where things are in it.
#[derive(Clone)]
struct DocText {
    source: Arc<str>,
    span: Range<usize>,
    /// Where the text starts in the file.
    origin: Pos,
    /// Path of the object inside the document: `items[3]` for a YAML List's item.
    base: String,
    locator: OnceLock<Arc<Locator>>,
}

impl DocText {
    fn new(source: &Arc<str>, span: Range<usize>, origin: Pos) -> Self {
        DocText {
            source: source.clone(),
            span,
            origin,
            base: String::new(),
            locator: OnceLock::new(),
        }
    }

    fn text(&self) -> &str {
        self.source.get(self.span.clone()).unwrap_or("")
    }

    /// Built on first use: documents without errors never need it.
    fn locator(&self) -> &Locator {
        self.locator
            .get_or_init(|| Arc::new(Locator::build(self.text())))
    }

    /// A position in the text → a position in the file.
    fn abs(&self, rel: Pos) -> Pos {
        if rel.line <= 1 {
            Pos {
                line: self.origin.line,
                column: self.origin.column + rel.column.max(1) - 1,
            }
        } else {
            Pos {
                line: self.origin.line + rel.line - 1,
                column: rel.column,
            }
        }
    }

    fn full_path(&self, field: &str) -> String {
        match (self.base.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.base.clone(),
            (false, false) if field.starts_with('[') => format!("{}{field}", self.base),
            (false, false) => format!("{}.{field}", self.base),
        }
    }

    fn locate(&self, field: &str) -> Pos {
        self.abs(self.locator().nearest(&self.full_path(field)))
    }
}

fn parse_doc(out: &mut Output, text: DocText, index: usize, format: Format) {
    if format == Format::Yaml && is_blank(text.text()) {
        return;
    }
    let header = match read_header(&text, format) {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err((msg, loc)) => {
            let cause = header_cause(out.file, &text, msg, loc, format);
            out.errors.push(cause);
            return;
        }
    };
    let line = text
        .abs(Pos {
            line: first_content_line(text.text()),
            column: 1,
        })
        .line;
    match check_header(out, &text, &header) {
        Some(DocKind::Object(kind)) => {
            let object = header.object(kind);
            let parsed = match format {
                Format::Yaml => typed_from_yaml_str(kind, text.text()),
                Format::Json => typed_from_json_str(kind, text.text()),
            };
            finish(out, text, index, line, object, parsed);
        }
        Some(DocKind::List) if format == Format::Json => nested_list(out, &text),
        Some(DocKind::List) => {
            let Some(serde_yaml::Value::Sequence(items)) = header.items else {
                let p = text.locate("items");
                out.errors.push(cause_at(
                    out.file,
                    p,
                    None,
                    Some("items"),
                    "a List needs items, a list of objects",
                ));
                return;
            };
            for (i, item) in items.into_iter().enumerate() {
                let mut text = text.clone();
                text.base = field_index("items", i);
                parse_list_item(out, text, index, line, item);
            }
        }
        None => {}
    }
}

/// The document's header (apiVersion, kind, metadata.name and a List's items); None for an
/// empty YAML document; the parser's message and position when it is not a mapping.
fn read_header(
    text: &DocText,
    format: Format,
) -> Result<Option<Header<serde_yaml::Value>>, (String, Option<Pos>)> {
    match format {
        Format::Yaml => serde_yaml::from_str::<Option<Header<serde_yaml::Value>>>(text.text())
            .map_err(|e| {
                let loc = e.location().map(|l| Pos {
                    line: l.line(),
                    column: l.column(),
                });
                (e.to_string(), loc)
            }),
        Format::Json => serde_json::from_str::<Header<IgnoredAny>>(text.text())
            .map(|h| {
                Some(Header {
                    api_version: h.api_version,
                    kind: h.kind,
                    metadata: h.metadata,
                    items: None,
                })
            })
            .map_err(|e| {
                let loc = Pos {
                    line: e.line().max(1),
                    column: e.column().max(1),
                };
                (e.to_string(), Some(loc))
            }),
    }
}

fn nested_list(out: &mut Output, text: &DocText) {
    let p = text.locate("kind");
    out.errors.push(cause_at(
        out.file,
        p,
        None,
        Some("kind"),
        "a List cannot hold another List",
    ));
}

/// One item of a YAML List, whose text is its List's (`text.base` is `items[i]`).
fn parse_list_item(
    out: &mut Output,
    text: DocText,
    index: usize,
    line: usize,
    item: serde_yaml::Value,
) {
    let h = match serde_yaml::from_value::<Header<IgnoredAny>>(item.clone()) {
        Ok(h) => h,
        Err(_) => {
            let p = text.locate("");
            out.errors.push(cause_at(
                out.file,
                p,
                None,
                None,
                "a List item must be a mapping with apiVersion, kind, metadata and spec",
            ));
            return;
        }
    };
    let h: Header<IgnoredAny> = Header {
        api_version: h.api_version,
        kind: h.kind,
        metadata: h.metadata,
        items: None,
    };
    match check_header(out, &text, &h) {
        Some(DocKind::Object(kind)) => {
            let object = h.object(kind);
            let parsed = typed_from_yaml_value(kind, item).map_err(|e| (e.to_string(), None));
            finish(out, text, index, line, object, parsed);
        }
        Some(DocKind::List) => nested_list(out, &text),
        None => {}
    }
}

/// Runs the static checks on a typed object and keeps it, or records why it is not one.
fn finish(
    out: &mut Output,
    text: DocText,
    index: usize,
    line: usize,
    object: Option<String>,
    parsed: Result<Resource, (String, Option<Pos>)>,
) {
    match parsed {
        Ok(resource) => {
            let doc = ParsedDoc {
                file: out.file.to_string(),
                doc_index: index,
                line,
                resource,
                text,
            };
            // The header check already reported a bad apiVersion, located.
            let errors: Vec<Cause> = validate::validate_object(&doc.resource)
                .iter()
                .filter(|e| e.field != "apiVersion")
                .map(|e| doc.cause(e))
                .collect();
            if errors.is_empty() {
                out.docs.push(doc);
            } else {
                out.validation_errors += errors.len();
                out.errors.extend(errors);
                out.invalid.push(doc);
            }
        }
        Err((msg, loc)) => {
            // A missing apiVersion was reported by the header check.
            if msg.starts_with("missing field `apiVersion`") {
                return;
            }
            let cause = serde_cause(out.file, &text, object.as_deref(), &msg, loc);
            out.errors.push(cause);
        }
    }
}

fn typed_from_yaml_str(kind: Kind, text: &str) -> Result<Resource, (String, Option<Pos>)> {
    fn typed<T: DeserializeOwned>(text: &str) -> Result<T, (String, Option<Pos>)> {
        serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location().map(|l| Pos {
                line: l.line(),
                column: l.column(),
            });
            (e.to_string(), loc)
        })
    }
    Ok(match kind {
        Kind::Node => Resource::Node(typed(text)?),
        Kind::Network => Resource::Network(typed(text)?),
        Kind::Container => Resource::Container(typed(text)?),
        Kind::Link => Resource::Link(typed(text)?),
        Kind::Tunnel => Resource::Tunnel(typed(text)?),
    })
}

/// JSON is read with the YAML parser too, for its paths in errors; the few JSON texts
/// libyaml cannot read go to serde_json.
fn typed_from_json_str(kind: Kind, text: &str) -> Result<Resource, (String, Option<Pos>)> {
    fn typed<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(text)
    }
    match typed_from_yaml_str(kind, text) {
        Ok(r) => Ok(r),
        Err(e) if serde_yaml::from_str::<IgnoredAny>(text).is_ok() => Err(e),
        Err(_) => {
            let r = match kind {
                Kind::Node => typed(text).map(Resource::Node),
                Kind::Network => typed(text).map(Resource::Network),
                Kind::Container => typed(text).map(Resource::Container),
                Kind::Link => typed(text).map(Resource::Link),
                Kind::Tunnel => typed(text).map(Resource::Tunnel),
            };
            r.map_err(|e| {
                let loc = Pos {
                    line: e.line().max(1),
                    column: e.column().max(1),
                };
                (e.to_string(), Some(loc))
            })
        }
    }
}

fn typed_from_yaml_value(kind: Kind, v: serde_yaml::Value) -> Result<Resource, serde_yaml::Error> {
    Ok(match kind {
        Kind::Node => Resource::Node(serde_yaml::from_value(v)?),
        Kind::Network => Resource::Network(serde_yaml::from_value(v)?),
        Kind::Container => Resource::Container(serde_yaml::from_value(v)?),
        Kind::Link => Resource::Link(serde_yaml::from_value(v)?),
        Kind::Tunnel => Resource::Tunnel(serde_yaml::from_value(v)?),
    })
}

// ------------------------------------------------------------------ header

/// A scalar that may be absent, a string, or something else (described for the message).
enum Scalar {
    Str(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other("empty"))
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other("empty"))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, a: A) -> Result<Scalar, A::Error> {
                IgnoredAny.visit_seq(a).map(|_| Scalar::Other("a list"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, a: A) -> Result<Scalar, A::Error> {
                IgnoredAny.visit_map(a).map(|_| Scalar::Other("a mapping"))
            }
            fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<Scalar, A::Error> {
                IgnoredAny
                    .visit_enum(a)
                    .map(|_| Scalar::Other("a tagged value"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `metadata.name`, if `metadata` is a mapping that has one.
struct MetaName(Option<Scalar>);

impl<'de> Deserialize<'de> for MetaName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<MetaName, A::Error> {
                let mut name = None;
                while let Some(k) = a.next_key::<Scalar>()? {
                    match k {
                        Scalar::Str(k) if k == "name" && name.is_none() => {
                            name = Some(a.next_value()?)
                        }
                        _ => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(MetaName(name))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, a: A) -> Result<MetaName, A::Error> {
                IgnoredAny.visit_seq(a).map(|_| MetaName(None))
            }
            fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<MetaName, A::Error> {
                IgnoredAny.visit_enum(a).map(|_| MetaName(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<MetaName, E> {
                Ok(MetaName(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<MetaName, D::Error> {
                MetaName::deserialize(d)
            }
        }
        d.deserialize_any(V)
    }
}

/// What is read of a document before its kind is known.
#[derive(Deserialize)]
#[serde(bound = "I: Deserialize<'de>")]
struct Header<I> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<Scalar>,
    #[serde(default)]
    kind: Option<Scalar>,
    #[serde(default)]
    metadata: Option<MetaName>,
    /// A List's objects.
    #[serde(default)]
    items: Option<I>,
}

impl<I> Header<I> {
    /// `container/web`, for messages, when the name is readable.
    fn object(&self, kind: Kind) -> Option<String> {
        match &self.metadata {
            Some(MetaName(Some(Scalar::Str(name)))) => {
                Some(ObjectRef::new(kind, name.clone()).to_string())
            }
            _ => None,
        }
    }
}

enum DocKind {
    Object(Kind),
    List,
}

/// Checks `kind` and `apiVersion`; both are reported when both are wrong.
fn check_header<I>(out: &mut Output, text: &DocText, h: &Header<I>) -> Option<DocKind> {
    let kind = match &h.kind {
        None => {
            let p = text.locate("");
            out.errors.push(cause_at(
                out.file,
                p,
                None,
                Some("kind"),
                &format!("missing field \"kind\" (expected one of {KINDS})"),
            ));
            None
        }
        Some(Scalar::Str(k)) if k == "List" => Some(DocKind::List),
        Some(Scalar::Str(k)) => match Kind::from_manifest(k) {
            Some(kind) => Some(DocKind::Object(kind)),
            None => {
                let p = text.locate("kind");
                let names = Kind::ALL.map(Kind::as_str);
                let message = match closest(k, names) {
                    Some(s) => {
                        format!("unknown kind {k:?} (did you mean {s:?}?); expected one of {KINDS}")
                    }
                    None => format!("unknown kind {k:?} (expected one of {KINDS})"),
                };
                out.errors
                    .push(cause_at(out.file, p, None, Some("kind"), &message));
                None
            }
        },
        Some(Scalar::Other(what)) => {
            let p = text.locate("kind");
            out.errors.push(cause_at(
                out.file,
                p,
                None,
                Some("kind"),
                &format!("kind must be a string, found {what} (expected one of {KINDS})"),
            ));
            None
        }
    };
    let object = match &kind {
        Some(DocKind::Object(k)) => h.object(*k),
        _ => None,
    };
    let api_error = match &h.api_version {
        None => Some(format!(
            "missing field \"apiVersion\" (expected {API_VERSION})"
        )),
        Some(Scalar::Str(v)) if v == API_VERSION => None,
        Some(Scalar::Str(v)) => Some(format!(
            "unsupported apiVersion {v:?} (expected {API_VERSION})"
        )),
        Some(Scalar::Other(what)) => Some(format!(
            "apiVersion must be a string, found {what} (expected {API_VERSION})"
        )),
    };
    if let Some(message) = api_error {
        let p = if h.api_version.is_some() {
            text.locate("apiVersion")
        } else {
            text.locate("")
        };
        out.errors.push(cause_at(
            out.file,
            p,
            object.as_deref(),
            Some("apiVersion"),
            &message,
        ));
    }
    kind
}

fn cause_at(file: &str, p: Pos, object: Option<&str>, field: Option<&str>, message: &str) -> Cause {
    Cause {
        file: Some(file.to_string()),
        line: Some(p.line),
        column: Some(p.column),
        object: object.map(Into::into),
        field: field.filter(|f| !f.is_empty()).map(Into::into),
        message: message.to_string(),
    }
}

// ------------------------------------------------------------------ serde errors

/// Removes the parser's ` at line L column C` for the error's own position (the Cause
/// carries it) and makes any other position file-absolute.
fn strip_location(msg: &str, loc: Option<Pos>) -> String {
    match loc {
        Some(p) => msg.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1),
        None => msg.to_string(),
    }
}

/// Rewrites every `line L column C` in `msg` (positions in the document's text) to positions
/// in the file.
fn absolute_positions(msg: &str, text: &DocText) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 5..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let tail = &after[digits..];
        let col_digits = tail
            .strip_prefix(" column ")
            .map(|t| t.chars().take_while(char::is_ascii_digit).count());
        match (after[..digits].parse::<usize>(), col_digits) {
            (Ok(line), Some(cd)) if cd > 0 => {
                let col_str = &tail[8..8 + cd];
                let column = col_str.parse::<usize>().unwrap_or(1);
                let p = text.abs(Pos { line, column });
                out.push_str(&format!("line {} column {}", p.line, p.column));
                rest = &tail[8 + cd..];
            }
            _ => {
                out.push_str("line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// serde_yaml prefixes messages with the path of the value (`spec.networks[0]: ...`).
fn split_path(msg: &str) -> (Option<&str>, &str) {
    if let Some((p, rest)) = msg.split_once(": ")
        && !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]?\"/".contains(c))
        && !p.starts_with('"')
    {
        return (Some(p), rest);
    }
    (None, msg)
}

/// The names between backticks in serde's `expected one of `a`, `b``.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

fn suggestion(word: &str, expected: &[&str]) -> String {
    match closest(word, expected.iter().copied()) {
        Some(s) => format!(" (did you mean {s:?}?)"),
        None if expected.is_empty() => String::new(),
        None => format!(" (expected one of: {})", expected.join(", ")),
    }
}

/// serde's names of types, in operators' words.
fn expected_words(exp: &str) -> String {
    match exp {
        "u8" => "a whole number from 0 to 255".into(),
        "u16" => "a whole number from 0 to 65535".into(),
        "u32" => format!("a whole number from 0 to {}", u32::MAX),
        "u64" | "i64" | "i32" | "usize" => "a whole number".into(),
        "a sequence" => "a list".into(),
        "a map" => "a mapping".into(),
        "a boolean" => "true or false".into(),
        "a borrowed string" => "a string".into(),
        e if e.starts_with("struct ") => "a mapping".into(),
        e if e.starts_with("a string") => "a string".into(),
        e => e.to_string(),
    }
}

fn found_words(found: &str) -> String {
    match found {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "nothing (null)".into(),
        f => f.to_string(),
    }
}

/// A serde error of a typed parse, as a located Cause with an operator's message.
fn serde_cause(
    file: &str,
    text: &DocText,
    object: Option<&str>,
    raw: &str,
    loc: Option<Pos>,
) -> Cause {
    let msg = absolute_positions(&strip_location(raw, loc), text);
    let (path, rest) = split_path(&msg);
    let path = path.filter(|p| *p != ".").unwrap_or("");
    let at = SerdeError {
        file,
        text,
        object,
        loc,
        path,
        rest,
    };
    if let Some(r) = rest.strip_prefix("unknown field `") {
        return at.unknown_field(r);
    }
    if let Some(r) = rest.strip_prefix("unknown variant `") {
        return at.unknown_variant(r);
    }
    if rest.starts_with("missing field `") {
        return at.missing_field();
    }
    if rest.starts_with("duplicate field `") {
        return at.duplicate_field();
    }
    at.bad_value()
}

/// One serde error of a document: its message split into the field path serde gives and
/// the rest, and where the parser put it.
struct SerdeError<'a> {
    file: &'a str,
    text: &'a DocText,
    object: Option<&'a str>,
    loc: Option<Pos>,
    path: &'a str,
    rest: &'a str,
}

/// chrono's parse errors, which name neither the value nor the format.
const TIME_ERRORS: [&str; 6] = [
    "input contains invalid characters",
    "premature end of input",
    "input is out of range",
    "input is not enough for unique date and time",
    "trailing input",
    "no possible date and time matching input",
];

impl SerdeError<'_> {
    fn cause(&self, pos: Option<Pos>, field: &str, message: String) -> Cause {
        Cause {
            file: Some(self.file.to_string()),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            object: self.object.map(Into::into),
            field: (!field.is_empty()).then(|| field.to_string()),
            message,
        }
    }

    /// The parser's own position, made absolute in the file.
    fn at_loc(&self) -> Option<Pos> {
        self.loc.map(|l| self.text.abs(l))
    }

    /// The first backticked name of the message (`unknown field `x``).
    fn name(&self) -> &str {
        backticked(self.rest).first().copied().unwrap_or("")
    }

    /// The names after "expected" in `after_prefix`.
    fn expected(after_prefix: &str) -> Vec<&str> {
        after_prefix
            .split_once("expected")
            .map(|(_, e)| backticked(e))
            .unwrap_or_default()
    }

    fn unknown_field(&self, after_prefix: &str) -> Cause {
        let name = self.name();
        let expected = Self::expected(after_prefix);
        let message = format!("unknown field {name:?}{}", suggestion(name, &expected));
        let pos = self
            .at_loc()
            .or_else(|| Some(self.text.locate(&field_key(self.path, name))));
        self.cause(pos, self.path, message)
    }

    fn unknown_variant(&self, after_prefix: &str) -> Cause {
        let name = self.name();
        let expected = Self::expected(after_prefix);
        let hint = match closest(name, expected.iter().copied()) {
            Some(s) => format!(" (did you mean {s:?}?)"),
            None => format!(" (expected one of: {})", expected.join(", ")),
        };
        let field = self.field_at_loc();
        let pos = self.at_loc().or_else(|| Some(self.text.locate(&field)));
        self.cause(pos, &field, format!("unknown value {name:?}{hint}"))
    }

    fn missing_field(&self) -> Cause {
        let name = self.name();
        let field = field_key(self.path, name);
        let mut message = format!("missing required field {name:?}");
        match name {
            "apiVersion" => message.push_str(&format!(" (expected {API_VERSION})")),
            "metadata" => message.push_str(" (expected at least metadata.name)"),
            _ => {}
        }
        self.cause(Some(self.text.locate(self.path)), &field, message)
    }

    fn duplicate_field(&self) -> Cause {
        let name = self.name();
        let field = field_key(self.path, name);
        let pos = self
            .text
            .locator()
            .duplicate(&self.text.full_path(&field))
            .map(|p| self.text.abs(p))
            .or_else(|| self.at_loc());
        self.cause(pos, &field, format!("field {name:?} is given twice"))
    }

    /// The located field whose key the parser's position is on, under serde's path.
    fn field_at_loc(&self) -> String {
        self.text
            .locator()
            .path_at(self.loc, self.path)
            .unwrap_or_else(|| self.path.to_string())
    }

    /// A value of the wrong type or out of range, or a deserializer's own message.
    fn bad_value(&self) -> Cause {
        let (field, pos) = self.value_field();
        let rest = self.rest;
        if let Some(r) = rest.strip_prefix("invalid type: ")
            && let Some((found, exp)) = r.rsplit_once(", expected ")
        {
            let message = format!(
                "expected {}, found {}",
                expected_words(exp),
                found_words(found)
            );
            return self.cause(pos, &field, message);
        }
        if let Some(r) = rest.strip_prefix("invalid value: ")
            && let Some((found, exp)) = r.rsplit_once(", expected ")
        {
            let value = backticked(found)
                .first()
                .map_or_else(|| found.to_string(), |v| v.to_string());
            let message = format!("{value} is out of range (expected {})", expected_words(exp));
            return self.cause(pos, &field, message);
        }
        if TIME_ERRORS.contains(&rest) {
            let message =
                format!("{rest} (expected an RFC 3339 time such as 2024-01-31T12:00:00Z)");
            return self.cause(pos, &field, message);
        }
        self.cause(pos, &field, rest.to_string())
    }

    /// The field a value error is about, and where it is.
    fn value_field(&self) -> (String, Option<Pos>) {
        let text = self.text;
        if self.rest.starts_with("invalid ") {
            let field = self.field_at_loc();
            let pos = self.at_loc().or_else(|| Some(text.locate(&field)));
            return (field, pos);
        }
        // A deserializer's own message (an address, a cidr): serde places it on the
        // enclosing mapping, the value it quotes tells the field.
        let full = text.full_path(self.path);
        match text.locator().child_quoted_in(&full, self.rest) {
            Some(child) => {
                let field = child
                    .strip_prefix(&text.base)
                    .map(|f| f.trim_start_matches('.'))
                    .unwrap_or(&child);
                (
                    field.to_string(),
                    Some(text.abs(text.locator().nearest(&child))),
                )
            }
            None => (self.path.to_string(), Some(text.locate(self.path))),
        }
    }
}

/// The header could not be read: a syntax error, or a document that is not a mapping.
fn header_cause(
    file: &str,
    text: &DocText,
    raw: String,
    loc: Option<Pos>,
    format: Format,
) -> Cause {
    let msg = absolute_positions(&strip_location(&raw, loc), text);
    let pos = loc
        .map(|l| text.abs(l))
        .unwrap_or_else(|| text.abs(Pos::START));
    let what = if format == Format::Json {
        "JSON"
    } else {
        "YAML"
    };
    let message = if let Some(r) = msg.strip_prefix("invalid type: ") {
        let found = r.split(", expected").next().unwrap_or(r);
        format!(
            "a manifest document must be a mapping with apiVersion, kind, metadata and spec (found {})",
            found_words(found)
        )
    } else if msg.contains("more than one document") {
        "more than one YAML document here; separate documents with a line holding only ---"
            .to_string()
    } else if split_path(&msg).0.is_some() || msg.starts_with("duplicate field") {
        return serde_cause(file, text, None, &raw, loc);
    } else {
        format!("invalid {what}: {msg}")
    };
    Cause {
        file: Some(file.to_string()),
        line: Some(pos.line),
        column: Some(pos.column),
        object: None,
        field: None,
        message,
    }
}

// ------------------------------------------------------------------ locator

/// Field paths of one document → positions (relative to the document's text) of their key,
/// or of the item for sequence items.
#[derive(Debug, Default)]
struct Locator {
    /// path → (position of the key or item, position of the value).
    entries: HashMap<String, (Pos, Pos)>,
    /// path → the scalar value there.
    scalars: HashMap<String, String>,
    /// Repeated keys of one mapping: the path and where it is repeated.
    duplicates: Vec<(String, Pos)>,
}

enum Frame {
    Map {
        path: String,
        /// The path of the key just read, waiting for its value; None when a key comes next.
        key: Option<(String, bool)>,
        /// A sequence item (or the root) located at this mapping's first key: yaml-rust2 puts
        /// a block mapping's start after its first key.
        first_key_of: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

enum NodeStart {
    Scalar(String),
    Alias,
    Map,
    Seq,
}

/// Paths longer than this are not located: a document of long keys nested deep would
/// otherwise cost memory quadratic in its size.
const MAX_PATH: usize = 1024;

/// Builds a [`Locator`] from yaml-rust2's events: a stack of the open mappings and
/// sequences, each knowing its path.
struct LocatorBuilder {
    loc: Locator,
    stack: Vec<Frame>,
    /// Depth inside a complex (non-scalar) mapping key, which has no path.
    skip: usize,
    /// The document is a flow mapping (`{...}`), whose start the parser places right.
    root_is_flow: bool,
}

impl LocatorBuilder {
    /// A mapping or a sequence ends.
    fn end(&mut self) {
        if self.skip > 0 {
            self.skip -= 1;
        } else {
            self.stack.pop();
        }
    }

    /// A node starts at `pos`: locate its path and, for a mapping or a sequence, enter it.
    fn node(&mut self, start: NodeStart, pos: Pos) {
        if self.skip > 0 {
            if matches!(start, NodeStart::Map | NodeStart::Seq) {
                self.skip += 1;
            }
            return;
        }
        let Some(child) = self.value_path(&start, pos) else {
            return;
        };
        let parent_is_map = matches!(self.stack.last(), Some(Frame::Map { .. }));
        let root_is_flow = self.stack.is_empty() && self.root_is_flow;
        match start {
            NodeStart::Map => self.stack.push(Frame::Map {
                first_key_of: (!parent_is_map && !root_is_flow).then(|| child.clone()),
                path: child,
                key: None,
            }),
            NodeStart::Seq => self.stack.push(Frame::Seq {
                path: child,
                next: 0,
            }),
            NodeStart::Scalar(v) => {
                self.loc.scalars.insert(child, v);
            }
            NodeStart::Alias => {}
        }
    }

    /// The path of a node that is a value (the root, a sequence item, a mapping's value),
    /// located at `pos`. None when the node is a mapping key (its path waits for the value)
    /// or goes unlocated.
    fn value_path(&mut self, start: &NodeStart, pos: Pos) -> Option<String> {
        let loc = &mut self.loc;
        match self.stack.last_mut() {
            None => {
                loc.entries.entry(String::new()).or_insert((pos, pos));
                Some(String::new())
            }
            Some(Frame::Seq { path, next }) => {
                let p = field_index(path, *next);
                *next += 1;
                loc.entries.entry(p.clone()).or_insert((pos, pos));
                Some(p)
            }
            Some(Frame::Map {
                path,
                key,
                first_key_of,
            }) => match key.take() {
                // A path too long to keep: its value and everything below it go unlocated.
                Some((p, _)) if p.is_empty() => {
                    if matches!(start, NodeStart::Map | NodeStart::Seq) {
                        self.skip = 1;
                    }
                    None
                }
                Some((p, dup)) => {
                    if !dup && let Some(e) = loc.entries.get_mut(&p) {
                        e.1 = pos;
                    }
                    Some(p)
                }
                None => {
                    if let Some(item) = first_key_of.take()
                        && let Some(e) = loc.entries.get_mut(&item)
                    {
                        *e = (pos, pos);
                    }
                    *key = Some(read_key(loc, path, start, pos, &mut self.skip));
                    None
                }
            },
        }
    }
}

/// A mapping key at `pos`: its path (empty when too long to keep) and whether it repeats a
/// key of the same mapping. A complex key has no path: what it holds is skipped.
fn read_key(
    loc: &mut Locator,
    parent: &str,
    start: &NodeStart,
    pos: Pos,
    skip: &mut usize,
) -> (String, bool) {
    let p = match start {
        NodeStart::Scalar(s) => field_key(parent, s),
        NodeStart::Alias => format!("{parent}.*"),
        NodeStart::Map | NodeStart::Seq => {
            *skip = 1;
            format!("{parent}.?")
        }
    };
    if p.len() > MAX_PATH {
        return (String::new(), true);
    }
    let dup = match loc.entries.entry(p.clone()) {
        Entry::Occupied(_) => {
            loc.duplicates.push((p.clone(), pos));
            true
        }
        Entry::Vacant(v) => {
            v.insert((pos, pos));
            false
        }
    };
    (p, dup)
}

impl Locator {
    fn build(text: &str) -> Locator {
        let mut b = LocatorBuilder {
            loc: Locator::default(),
            stack: Vec::new(),
            skip: 0,
            root_is_flow: text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .is_some_and(|l| l.starts_with('{')),
        };
        let mut parser = Parser::new_from_str(text);
        while let Ok((ev, mark)) = parser.next_token() {
            let pos = Pos {
                line: mark.line().max(1),
                column: mark.col() + 1,
            };
            let start = match ev {
                Event::StreamEnd => break,
                Event::Scalar(s, ..) => NodeStart::Scalar(s),
                Event::Alias(_) => NodeStart::Alias,
                Event::MappingStart(..) => NodeStart::Map,
                Event::SequenceStart(..) => NodeStart::Seq,
                Event::MappingEnd | Event::SequenceEnd => {
                    b.end();
                    continue;
                }
                _ => continue,
            };
            b.node(start, pos);
        }
        b.loc
    }

    /// The position of `path`, or of its nearest located ancestor, or the start.
    fn nearest(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some((key, _)) = self.entries.get(p) {
                return *key;
            }
            if p.is_empty() {
                return Pos::START;
            }
            p = match p.rfind(['.', '[']) {
                Some(i) => &p[..i],
                None => "",
            };
        }
    }

    /// The field directly under `parent` whose value `msg` starts with: deserializers' own
    /// messages quote the value but serde places them on the enclosing mapping.
    fn child_quoted_in(&self, parent: &str, msg: &str) -> Option<String> {
        self.scalars
            .iter()
            .filter(|(p, v)| {
                let direct = match p.strip_prefix(parent) {
                    Some(rest) if parent.is_empty() => !rest.contains(['.', '[']),
                    Some(rest) => rest
                        .strip_prefix('.')
                        .is_some_and(|k| !k.contains(['.', '['])),
                    None => false,
                };
                direct
                    && !v.is_empty()
                    && (msg.starts_with(&format!("{v:?}")) || msg.starts_with(&format!("{v} ")))
            })
            .map(|(p, _)| p.clone())
            .min()
    }

    fn duplicate(&self, path: &str) -> Option<Pos> {
        self.duplicates
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, pos)| *pos)
    }

    /// The path whose key (or else value) is at `loc`, if it lies under `under`: serde's
    /// custom errors are positioned on the key but name only the enclosing object.
    fn path_at(&self, loc: Option<Pos>, under: &str) -> Option<String> {
        let loc = loc?;
        let fits = |p: &str| {
            under.is_empty()
                || p == under
                || p.starts_with(&format!("{under}."))
                || p.starts_with(&format!("{under}["))
        };
        let pick = |by_value: bool| {
            self.entries
                .iter()
                .filter(|(p, (k, v))| (if by_value { *v } else { *k }) == loc && fits(p))
                .map(|(p, _)| p)
                .max_by_key(|p| p.len())
                .cloned()
        };
        pick(false).or_else(|| pick(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(file: &str, content: &str) -> Vec<String> {
        match parse_file(file, content) {
            Ok(d) => panic!("expected errors, parsed {d:?}"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    const NODE: &str = "apiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata:\n  name: node1\nspec:\n  address: 192.168.100.1\n";

    #[test]
    fn split_like_kubectl() {
        let s = "a: 1\n---\nb: 2\n--- # comment\n\n---x\n----\nc: 3\n";
        let docs = split_yaml(s);
        let texts: Vec<(&str, usize)> = docs.iter().map(|(r, l)| (&s[r.clone()], *l)).collect();
        assert_eq!(
            texts,
            vec![("a: 1\n", 1), ("b: 2\n", 3), ("\n---x\n----\nc: 3\n", 5)]
        );
        assert_eq!(
            split_yaml("---\na: 1")
                .iter()
                .map(|(_, l)| *l)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn multi_document_positions_are_file_absolute() {
        let content = format!(
            "# leading comment\n---\n{NODE}---\n# only a comment\n---\n\n{}",
            NODE.replace("node1", "node2")
        );
        let docs = parse_file("n.yaml", &content).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 3);
        assert_eq!(docs[1].line, 13);
        assert_eq!(docs[1].doc_index, 3);
        assert_eq!(docs[1].locate("metadata.name"), (16, 3));
        assert_eq!(docs[1].locate("spec.address"), (18, 3));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(docs[1].locate("spec.datapath"), (17, 1));
        assert_eq!(docs[1].locate("nope.x[3]"), (13, 1));
    }

    #[test]
    fn locator_paths() {
        let text = "a:\n  b: [x, {c: 1}]\n  list:\n  - k: v\n    m: n\n  -   k: w\n  labels: {\"x.y/z\": q}\n? [complex]\n: 1\nafter: 2\n";
        let l = Locator::build(text);
        let at = |p: &str| l.entries.get(p).map(|e| (e.0.line, e.0.column));
        assert_eq!(at(""), Some((1, 1)));
        assert_eq!(at("a.b"), Some((2, 3)));
        assert_eq!(at("a.b[0]"), Some((2, 7)));
        assert_eq!(at("a.b[1].c"), Some((2, 11)));
        assert_eq!(at("a.list[0]"), Some((4, 5)));
        assert_eq!(at("a.list[0].m"), Some((5, 5)));
        assert_eq!(at("a.list[1]"), Some((6, 7)));
        assert_eq!(at("a.labels[\"x.y/z\"]"), Some((7, 12)));
        assert_eq!(at("after"), Some((10, 1)));
        assert_eq!(
            l.entries.get("a.b[1].c").map(|e| e.1),
            Some(Pos {
                line: 2,
                column: 14
            })
        );
    }

    #[test]
    fn long_paths_are_not_kept() {
        let key = "k".repeat(600);
        let text = format!("a:\n  {key}:\n    {key}:\n      x: [1, {{y: 2}}]\n  b: 3\n");
        let l = Locator::build(&text);
        assert!(
            l.entries.keys().all(|p| p.len() <= MAX_PATH),
            "{:?}",
            l.entries.keys()
        );
        assert_eq!(
            l.entries.get("a.b").map(|e| e.0),
            Some(Pos { line: 5, column: 3 })
        );
        assert_eq!(
            l.nearest(&format!("a.{key}.{key}.x")),
            Pos { line: 2, column: 3 }
        );
    }

    #[test]
    fn unknown_field_suggests() {
        let c = causes(
            "web.yaml",
            "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: web\nspec:\n  node: node1\n  imagee: busybox\n",
        );
        assert_eq!(
            c,
            vec![
                "web.yaml:7:3: container/web: spec: unknown field \"imagee\" (did you mean \"image\"?)"
            ]
        );
        let c = causes("x.yaml", &format!("{NODE}  colour: blue\n"));
        assert_eq!(
            c,
            vec![
                "x.yaml:7:3: node/node1: spec: unknown field \"colour\" (expected one of: address, datapath, reservedPorts)"
            ]
        );
    }

    #[test]
    fn wrong_types_and_values() {
        let base = "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: web\nspec:\n  node: node1\n  image: busybox\n";
        let c = causes(
            "c.yaml",
            &format!("{base}  ports:\n  - containerPort: abc\n"),
        );
        assert_eq!(
            c,
            vec![
                "c.yaml:9:20: container/web: spec.ports[0].containerPort: expected a whole number from 0 to 4294967295, found string \"abc\""
            ]
        );
        let c = causes("c.yaml", &format!("{base}  imagePullPolicy: Sometimes\n"));
        assert_eq!(
            c,
            vec![
                "c.yaml:8:20: container/web: spec.imagePullPolicy: unknown value \"Sometimes\" (expected one of: IfNotPresent, Never, Always)"
            ]
        );
        let c = causes(
            "c.yaml",
            &format!("{base}  networks:\n  - network: a\n    ip: 10.3.3\n"),
        );
        assert_eq!(
            c,
            vec![
                "c.yaml:10:5: container/web: spec.networks[0].ip: \"10.3.3\" is not an IPv4 address (expected e.g. 10.2.0.5)"
            ]
        );
        let c = causes("c.yaml", &format!("{base}  image: again\n"));
        assert_eq!(
            c,
            vec!["c.yaml:8:3: container/web: spec.image: field \"image\" is given twice"]
        );
        let c = causes(
            "c.yaml",
            "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: web\nspec:\n  image: x\n",
        );
        assert_eq!(
            c,
            vec!["c.yaml:5:1: container/web: spec.node: missing required field \"node\""]
        );
        let c = causes(
            "c.yaml",
            "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata:\n  name: n\nspec:\n  cidr: 10.0.0.0/8\n  blockSize: 300\n",
        );
        assert_eq!(
            c,
            vec![
                "c.yaml:7:14: network/n: spec.blockSize: 300 is out of range (expected a whole number from 0 to 255)"
            ]
        );
        let c = causes(
            "c.yaml",
            "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: [x]\nspec: {}\n",
        );
        assert_eq!(
            c,
            vec!["c.yaml:3:11: metadata: expected a mapping, found a list"]
        );
    }

    #[test]
    fn kind_and_api_version() {
        let c = causes(
            "k.yaml",
            "apiVersion: topo.dev/v1alpha1\nkind: Contianer\nmetadata: {name: a}\n",
        );
        assert_eq!(
            c,
            vec![
                "k.yaml:2:1: kind: unknown kind \"Contianer\" (did you mean \"Container\"?); expected one of Node, Network, Container, Link, Tunnel"
            ]
        );
        let c = causes("k.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n");
        assert_eq!(
            c,
            vec![
                "k.yaml:2:1: kind: unknown kind \"Pod\" (expected one of Node, Network, Container, Link, Tunnel)",
                "k.yaml:1:1: apiVersion: unsupported apiVersion \"v1\" (expected topo.dev/v1alpha1)",
            ]
        );
        let c = causes("k.yaml", "\n\nmetadata: {name: a}\n");
        assert_eq!(
            c,
            vec![
                "k.yaml:3:1: kind: missing field \"kind\" (expected one of Node, Network, Container, Link, Tunnel)",
                "k.yaml:3:1: apiVersion: missing field \"apiVersion\" (expected topo.dev/v1alpha1)",
            ]
        );
        let c = causes("k.yaml", &NODE.replace("topo.dev/v1alpha1", "topo.dev/v1"));
        assert_eq!(
            c,
            vec![
                "k.yaml:1:1: node/node1: apiVersion: unsupported apiVersion \"topo.dev/v1\" (expected topo.dev/v1alpha1)"
            ]
        );
        let c = causes("k.yaml", "- a\n- b\n");
        assert_eq!(
            c,
            vec![
                "k.yaml:1:1: a manifest document must be a mapping with apiVersion, kind, metadata and spec (found a list)"
            ]
        );
    }

    #[test]
    fn syntax_errors_are_file_absolute() {
        let content = format!(
            "{NODE}---\napiVersion: topo.dev/v1alpha1\nkind: Node\nmetadata: {{name: [x\nspec: {{}}\n"
        );
        let c = causes("s.yaml", &content);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].starts_with("s.yaml:11:5: invalid YAML: did not find expected ',' or ']'"),
            "{c:?}"
        );
        assert!(
            c[0].ends_with("while parsing a flow sequence at line 10 column 18"),
            "{c:?}"
        );
    }

    #[test]
    fn all_errors_of_all_documents() {
        let content = format!(
            "{}---\n{}---\nkind: Nope\n",
            NODE.replace("192.168.100.1", "127.0.0.1"),
            NODE.replace("node1", "Node_2")
        );
        let c = causes("all.yaml", &content);
        assert_eq!(c.len(), 4, "{c:?}");
        assert!(c[0].starts_with(
            "all.yaml:6:3: node/node1: spec.address: 127.0.0.1 is a loopback address"
        ));
        assert!(
            c[1].starts_with("all.yaml:11:3: node/Node_2: metadata.name: \"Node_2\" contains 'N'")
        );
        assert!(c[2].starts_with("all.yaml:15:1: kind: unknown kind \"Nope\""));
        assert!(c[3].starts_with("all.yaml:15:1: apiVersion: missing field"));
    }

    #[test]
    fn json_files() {
        let one = r#"{"apiVersion":"topo.dev/v1alpha1","kind":"Node","metadata":{"name":"a"},"spec":{"address":"192.168.1.1"}}"#;
        assert_eq!(parse_file("a.json", one).unwrap().len(), 1);
        let list = format!(
            "{{\"apiVersion\": \"topo.dev/v1alpha1\", \"kind\": \"List\", \"items\": [\n  {one},\n  {}\n]}}",
            one.replace("\"a\"", "\"b\"")
        );
        let docs = parse_file("list.json", &list).unwrap();
        assert_eq!(
            docs.iter().map(|d| d.resource.name()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(docs[1].line, 3);
        assert_eq!(docs[1].locate(""), (3, 3));
        let array = format!(
            "[{one},\n {}]",
            one.replace("\"name\":\"a\"", "\"name\":\"b\",\"colour\":1")
        );
        let c = causes("arr.json", &array);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with("arr.json:2:73: node/b: metadata: unknown field \"colour\""),
            "{c:?}"
        );
        let c = causes("bad.json", "{\"apiVersion\": \n}");
        assert_eq!(c, vec!["bad.json:2:1: invalid JSON: expected value"]);
        // YAML flow style that is not JSON is still YAML.
        let flow = "{apiVersion: topo.dev/v1alpha1, kind: Node, metadata: {name: a}, spec: {address: 192.168.1.1}}";
        assert_eq!(parse_file("f.yaml", flow).unwrap().len(), 1);
    }

    #[test]
    fn yaml_list() {
        let content = format!(
            "apiVersion: topo.dev/v1alpha1\nkind: List\nitems:\n- {}\n- {}\n",
            "{apiVersion: topo.dev/v1alpha1, kind: Node, metadata: {name: a}, spec: {address: 192.168.1.1}}",
            "{apiVersion: topo.dev/v1alpha1, kind: Node, metadata: {name: b}, spec: {address: 127.0.0.1}}"
        );
        let c = causes("l.yaml", &content);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].starts_with("l.yaml:5:75: node/b: spec.address: 127.0.0.1 is a loopback"),
            "{c:?}"
        );
    }

    #[test]
    fn duplicates_across_files() {
        let files = [
            SourceFile {
                name: "a.yaml".into(),
                content: NODE.into(),
            },
            SourceFile {
                name: "b.yaml".into(),
                content: format!("\n{NODE}"),
            },
        ];
        let c: Vec<String> = parse_files(&files)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            c,
            vec![
                "b.yaml:5:3: node/node1: metadata.name: node/node1 is defined twice: at a.yaml:4:3 and at b.yaml:5:3 (names are unique per kind)"
            ]
        );
    }
}
