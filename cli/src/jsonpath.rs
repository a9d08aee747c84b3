//! kubectl's JSONPath template dialect, for `-o jsonpath=`, `-o custom-columns=` and
//! `--sort-by=` (https://kubernetes.io/docs/reference/kubectl/jsonpath/).
//!
//! No crate speaks this dialect: the JSONPath crates implement RFC 9535 queries, while
//! kubectl's are *templates* — literal text with `{...}` actions, `{range ...}{end}` loops and
//! `{"\t"}` string literals — so this is a small evaluator of its own. It is split as the
//! work is: [`Template::parse`] turns the text into [`Node`]s (every error names the
//! character where it was found), and evaluation walks a `serde_json::Value` with them.
//! Supported: `$` and `@`, `.field` (`\.` escapes a dot in a name), `..field` (recursive
//! descent), `*` and `[*]`, `[n]` (negative from the end), `[a:b:step]`, unions `[0,2]` and
//! `['a','b']`, and filters `[?(@.x == "y")]` with `== != < <= > >=` or a bare path (the
//! field exists). As kubectl's `get`, a missing field gives no result unless missing keys
//! are refused.

use serde_json::Value;

/// A template that does not parse: what was expected, and where (1-based character).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid jsonpath {template:?} at character {position}: {message}")]
pub struct ParseError {
    pub template: String,
    pub position: usize,
    pub message: String,
}

/// A template that parsed but could not be evaluated against the data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("failed to evaluate jsonpath {template:?}: {field} is not found")]
    NotFound { template: String, field: String },
    #[error(
        "failed to evaluate jsonpath {template:?}: array index {index} is out of bounds (length {len})"
    )]
    OutOfBounds {
        template: String,
        index: i64,
        len: usize,
    },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    /// One `{...}`: its paths and string literals; the results are joined by spaces.
    Action(Vec<Item>),
    Range {
        path: Path,
        body: Vec<Node>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Literal(String),
    Path(Path),
}

#[derive(Debug, Clone, PartialEq)]
struct Path {
    from_root: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Wildcard,
    /// `..`: the value and everything below it; the next step is applied to each.
    Descend,
    Index(i64),
    Slice(Option<i64>, Option<i64>, i64),
    Union(Vec<Key>),
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
enum Key {
    Name(String),
    Index(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    left: Operand,
    compare: Option<(Op, Operand)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Path(Path),
    Const(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Characters that end a field name written after a dot.
const NAME_END: &[char] = &[
    '.', '[', ']', '{', '}', '(', ')', ' ', '\t', '\n', ',', '=', '!', '<', '>', '"', '\'',
];

struct Parser<'s> {
    source: &'s str,
    chars: Vec<char>,
    pos: usize,
}

impl<'s> Parser<'s> {
    fn new(source: &'s str) -> Self {
        Parser {
            source,
            chars: source.chars().collect(),
            pos: 0,
        }
    }

    fn error(&self, at: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            template: self.source.to_string(),
            position: at + 1,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        match self.peek() {
            Some(x) if x == c => {
                self.pos += 1;
                Ok(())
            }
            Some(x) => Err(self.error(self.pos, format!("unexpected {x:?} (expected {what})"))),
            None => Err(self.error(self.pos, format!("the template ends (expected {what})"))),
        }
    }

    /// `word` followed by a space or `}`: a keyword (`range`, `end`).
    fn keyword(&mut self, word: &str) -> bool {
        let n = word.chars().count();
        let matches = word
            .chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i) == Some(c))
            && self
                .peek_at(n)
                .is_none_or(|c| c.is_whitespace() || c == '}');
        if matches {
            self.pos += n;
        }
        matches
    }

    fn template(&mut self) -> Result<Vec<Node>, ParseError> {
        // Open ranges: their path, the nodes before them, where they started.
        let mut open: Vec<(Path, Vec<Node>, usize)> = Vec::new();
        let mut nodes = Vec::new();
        loop {
            let text = self.text();
            if !text.is_empty() {
                nodes.push(Node::Text(text));
            }
            let Some(_) = self.peek() else { break };
            let start = self.pos;
            self.pos += 1;
            self.skip_ws();
            if self.keyword("range") {
                self.skip_ws();
                let path = self.path()?;
                self.skip_ws();
                self.expect('}', "} after the range's path")?;
                open.push((path, std::mem::take(&mut nodes), start));
            } else if self.keyword("end") {
                self.skip_ws();
                self.expect('}', "} after end")?;
                let Some((path, before, _)) = open.pop() else {
                    return Err(self.error(start, "{end} without a {range} before it"));
                };
                let body = std::mem::replace(&mut nodes, before);
                nodes.push(Node::Range { path, body });
            } else {
                nodes.push(Node::Action(self.action(start)?));
            }
        }
        match open.pop() {
            Some((_, _, at)) => Err(self.error(at, "{range} without an {end}")),
            None => Ok(nodes),
        }
    }

    /// Literal text up to the next `{` (or the end).
    fn text(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek().filter(|c| *c != '{') {
            s.push(c);
            self.pos += 1;
        }
        s
    }

    /// The items of one `{...}`, after its `{`.
    fn action(&mut self, start: usize) -> Result<Vec<Item>, ParseError> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Err(self.error(start, "unclosed { (expected })")),
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                Some('"' | '\'') => items.push(Item::Literal(self.quoted()?)),
                Some(_) => items.push(Item::Path(self.path()?)),
            }
        }
        if items.is_empty() {
            return Err(self.error(start, "empty {} (expected a path such as .metadata.name)"));
        }
        Ok(items)
    }

    /// A string in double or single quotes, with `\t \n \r \\ \" \'` escapes.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let Some(quote) = self.peek() else {
            return Err(self.error(start, "expected a quoted string"));
        };
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        self.error(start, format!("unterminated string (expected {quote})"))
                    );
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some('\\') => {
                    let esc = self.peek_at(1);
                    s.push(match esc {
                        Some('t') => '\t',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some(c @ ('\\' | '"' | '\'')) => c,
                        _ => {
                            return Err(self.error(
                                self.pos,
                                "unknown escape (expected \\t, \\n, \\r, \\\\ or a quote)",
                            ));
                        }
                    });
                    self.pos += 2;
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn path(&mut self) -> Result<Path, ParseError> {
        let start = self.pos;
        let mut path = Path {
            from_root: false,
            steps: Vec::new(),
        };
        let anchored = match self.peek() {
            Some('$') => {
                path.from_root = true;
                true
            }
            Some('@') => true,
            _ => false,
        };
        if anchored {
            self.pos += 1;
        }
        loop {
            match self.peek() {
                Some('.') => self.dot_step(&mut path.steps)?,
                Some('[') => path.steps.push(self.bracket()?),
                _ => break,
            }
        }
        if path.steps.is_empty() && !anchored {
            let what = self
                .peek()
                .map(|c| format!("{c:?}"))
                .unwrap_or("the end".into());
            return Err(self.error(
                start,
                format!("unexpected {what} (expected a path such as .metadata.name, a quoted string, range or end)"),
            ));
        }
        Ok(path)
    }

    /// `.name`, `.*`, `..name`, `..*`, `..[...]`.
    fn dot_step(&mut self, steps: &mut Vec<Step>) -> Result<(), ParseError> {
        self.pos += 1;
        if self.peek() == Some('.') {
            self.pos += 1;
            steps.push(Step::Descend);
            if self.peek() == Some('[') {
                return Ok(());
            }
        }
        if self.peek() == Some('*') {
            self.pos += 1;
            steps.push(Step::Wildcard);
            return Ok(());
        }
        let at = self.pos;
        let name = self.name();
        if name.is_empty() {
            return Err(self.error(at, "expected a field name after ."));
        }
        steps.push(Step::Field(name));
        Ok(())
    }

    fn name(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if c == '\\' && self.peek_at(1).is_some() {
                s.extend(self.peek_at(1));
                self.pos += 2;
                continue;
            }
            if NAME_END.contains(&c) {
                break;
            }
            s.push(c);
            self.pos += 1;
        }
        s
    }

    /// `[*]`, `[?(...)]`, `[n]`, `[a:b:c]`, `[k1,k2]`.
    fn bracket(&mut self) -> Result<Step, ParseError> {
        let open = self.pos;
        self.pos += 1;
        self.skip_ws();
        let step = match self.peek() {
            Some('*') => {
                self.pos += 1;
                Step::Wildcard
            }
            Some('?') => {
                self.pos += 1;
                self.expect('(', "( after ?")?;
                let f = self.filter()?;
                self.skip_ws();
                self.expect(')', ") closing the filter")?;
                Step::Filter(f)
            }
            None => return Err(self.error(open, "unclosed [ (expected ])")),
            Some(_) => self.subscripts()?,
        };
        self.skip_ws();
        match self.peek() {
            Some(']') => {
                self.pos += 1;
                Ok(step)
            }
            None => Err(self.error(open, "unclosed [ (expected ])")),
            Some(c) => Err(self.error(self.pos, format!("unexpected {c:?} (expected ])"))),
        }
    }

    /// The inside of `[...]` that is not `*` or a filter: an index, a slice or a union.
    fn subscripts(&mut self) -> Result<Step, ParseError> {
        let mut keys = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some('"' | '\'') => keys.push(Key::Name(self.quoted()?)),
                _ => {
                    let first = self.integer()?;
                    self.skip_ws();
                    if keys.is_empty() && self.peek() == Some(':') {
                        return self.slice(first);
                    }
                    match first {
                        Some(i) => keys.push(Key::Index(i)),
                        None => {
                            let what = self
                                .peek()
                                .map(|c| format!("{c:?}"))
                                .unwrap_or("the end".into());
                            return Err(self.error(self.pos, format!("unexpected {what} (expected an index, a slice a:b, a quoted name, * or ?(...))")));
                        }
                    }
                }
            }
            self.skip_ws();
            if self.peek() != Some(',') {
                break;
            }
            self.pos += 1;
        }
        Ok(match keys.as_slice() {
            [Key::Index(i)] => Step::Index(*i),
            [Key::Name(n)] => Step::Field(n.clone()),
            _ => Step::Union(keys),
        })
    }

    /// After `a`, at the first `:`: `a:b` or `a:b:step`.
    fn slice(&mut self, start: Option<i64>) -> Result<Step, ParseError> {
        self.pos += 1;
        self.skip_ws();
        let end = self.integer()?;
        self.skip_ws();
        let mut step = 1;
        if self.peek() == Some(':') {
            self.pos += 1;
            self.skip_ws();
            let at = self.pos;
            step = self.integer()?.unwrap_or(1);
            if step == 0 {
                return Err(self.error(at, "a slice's step cannot be 0"));
            }
        }
        Ok(Step::Slice(start, end, step))
    }

    /// An optional integer (`-3`, `12`).
    fn integer(&mut self) -> Result<Option<i64>, ParseError> {
        let start = self.pos;
        let mut s = String::new();
        if self.peek() == Some('-') {
            s.push('-');
            self.pos += 1;
        }
        while let Some(d) = self.peek().filter(char::is_ascii_digit) {
            s.push(d);
            self.pos += 1;
        }
        if s.is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|_| self.error(start, format!("{s:?} is not an integer")))
    }

    fn filter(&mut self) -> Result<Filter, ParseError> {
        self.skip_ws();
        let left = self.operand()?;
        self.skip_ws();
        let at = self.pos;
        let two: String = [self.peek(), self.peek_at(1)]
            .into_iter()
            .flatten()
            .collect();
        let op = match two.as_str() {
            "==" => Some((Op::Eq, 2)),
            "!=" => Some((Op::Ne, 2)),
            "<=" => Some((Op::Le, 2)),
            ">=" => Some((Op::Ge, 2)),
            _ if two.starts_with('<') => Some((Op::Lt, 1)),
            _ if two.starts_with('>') => Some((Op::Gt, 1)),
            _ if two.starts_with('=') => {
                return Err(self.error(at, "unknown operator = (expected ==, !=, <, <=, > or >=)"));
            }
            _ => None,
        };
        let Some((op, len)) = op else {
            return Ok(Filter {
                left,
                compare: None,
            });
        };
        self.pos += len;
        self.skip_ws();
        let right = self.operand()?;
        Ok(Filter {
            left,
            compare: Some((op, right)),
        })
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let at = self.pos;
        match self.peek() {
            Some('@' | '$') => Ok(Operand::Path(self.path()?)),
            Some('"' | '\'') => Ok(Operand::Const(Value::String(self.quoted()?))),
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            _ => {
                for (word, v) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    ("null", Value::Null),
                ] {
                    if self.chars[self.pos..].starts_with(&word.chars().collect::<Vec<_>>()) {
                        self.pos += word.len();
                        return Ok(Operand::Const(v));
                    }
                }
                Err(self.error(
                    at,
                    "expected @.field, a quoted string, a number, true, false or null",
                ))
            }
        }
    }

    fn number(&mut self) -> Result<Operand, ParseError> {
        let start = self.pos;
        let mut s = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
        {
            s.push(c);
            self.pos += 1;
        }
        let n: Option<serde_json::Number> = match s.parse::<i64>() {
            Ok(i) => Some(i.into()),
            Err(_) => s.parse::<f64>().ok().and_then(serde_json::Number::from_f64),
        };
        n.map(|n| Operand::Const(Value::Number(n)))
            .ok_or_else(|| self.error(start, format!("{s:?} is not a number")))
    }
}

impl Template {
    /// A template as `-o jsonpath=` takes it: text with `{...}` actions.
    pub fn parse(source: &str) -> Result<Template, ParseError> {
        let nodes = Parser::new(source).template()?;
        Ok(Template {
            source: source.to_string(),
            nodes,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the template against `data` (an object, or a List with `items`).
    pub fn render(&self, data: &Value, allow_missing: bool) -> Result<String, EvalError> {
        let mut out = String::new();
        let eval = Eval {
            root: data,
            allow_missing,
            template: &self.source,
        };
        eval.nodes(&self.nodes, data, &mut out)?;
        Ok(out)
    }
}

/// One path, as `--sort-by` and a custom column take it: `.metadata.name`, `{.metadata.name}`
/// or `metadata.name` (kubectl's "relaxed" form).
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    path: Path,
}

impl Expr {
    pub fn parse_relaxed(source: &str) -> Result<Expr, ParseError> {
        let trimmed = source.trim();
        let inner = trimmed
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or(trimmed);
        // Where `inner` starts in `source`, to report positions in the user's own text.
        let offset =
            source.len() - source.trim_start().len() + (trimmed.len() - inner.len()).min(1);
        let offset = source[..offset].chars().count();
        let relative = !inner.starts_with(['.', '$', '@', '[']);
        let prefix = if relative { "." } else { "" };
        let wrapped = format!("{prefix}{inner}");
        let mut p = Parser::new(&wrapped);
        let located = |mut e: ParseError| {
            e.template = source.to_string();
            e.position = (e.position + offset).saturating_sub(prefix.len()).max(1);
            e
        };
        if inner.trim().is_empty() {
            return Err(located(
                p.error(0, "empty path (expected one such as .metadata.name)"),
            ));
        }
        let path = p.path().map_err(located)?;
        p.skip_ws();
        if p.peek().is_some() {
            let c = p.peek().unwrap_or(' ');
            return Err(located(
                p.error(p.pos, format!("unexpected {c:?} after the path")),
            ));
        }
        Ok(Expr {
            source: source.to_string(),
            path,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every value the path reaches in `data` (missing fields give none).
    pub fn find<'a>(&self, data: &'a Value) -> Vec<&'a Value> {
        let eval = Eval {
            root: data,
            allow_missing: true,
            template: &self.source,
        };
        eval.path(&self.path, data).unwrap_or_default()
    }
}

struct Eval<'t, 'a> {
    root: &'a Value,
    allow_missing: bool,
    template: &'t str,
}

impl<'a> Eval<'_, 'a> {
    fn nodes(&self, nodes: &[Node], current: &'a Value, out: &mut String) -> Result<(), EvalError> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(items) => {
                    let mut parts = Vec::new();
                    for item in items {
                        match item {
                            Item::Literal(s) => parts.push(s.clone()),
                            Item::Path(p) => {
                                parts.extend(self.path(p, current)?.into_iter().map(text_of))
                            }
                        }
                    }
                    out.push_str(&parts.join(" "));
                }
                Node::Range { path, body } => {
                    for v in self.path(path, current)? {
                        match v {
                            Value::Array(items) => {
                                for item in items {
                                    self.nodes(body, item, out)?;
                                }
                            }
                            other => self.nodes(body, other, out)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn path(&self, path: &Path, current: &'a Value) -> Result<Vec<&'a Value>, EvalError> {
        let mut values = vec![if path.from_root { self.root } else { current }];
        let mut lenient = false;
        for step in &path.steps {
            let mut next = Vec::new();
            for v in values {
                self.step(step, v, lenient, &mut next)?;
            }
            lenient = matches!(step, Step::Descend);
            values = next;
        }
        Ok(values)
    }

    fn missing(&self, lenient: bool, field: &str) -> Result<(), EvalError> {
        if lenient || self.allow_missing {
            Ok(())
        } else {
            Err(EvalError::NotFound {
                template: self.template.to_string(),
                field: field.to_string(),
            })
        }
    }

    /// Applies one step to `v`, pushing what it reaches. `lenient`: after `..`, where most
    /// values lack the field and that is no error.
    fn step(
        &self,
        step: &Step,
        v: &'a Value,
        lenient: bool,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), EvalError> {
        match step {
            Step::Field(name) => match v.get(name.as_str()).filter(|_| v.is_object()) {
                Some(x) => out.push(x),
                None => self.missing(lenient, name)?,
            },
            Step::Wildcard => out.extend(children(v)),
            Step::Descend => descend(v, out),
            Step::Index(i) => self.index(v, *i, lenient, out)?,
            Step::Slice(a, b, s) => {
                if let Value::Array(items) = v {
                    out.extend(slice(items, *a, *b, *s));
                }
            }
            Step::Union(keys) => {
                for k in keys {
                    match k {
                        Key::Name(n) => self.step(&Step::Field(n.clone()), v, lenient, out)?,
                        Key::Index(i) => self.index(v, *i, lenient, out)?,
                    }
                }
            }
            Step::Filter(f) => {
                for c in children(v) {
                    if self.holds(f, c)? {
                        out.push(c);
                    }
                }
            }
        }
        Ok(())
    }

    fn index(
        &self,
        v: &'a Value,
        i: i64,
        lenient: bool,
        out: &mut Vec<&'a Value>,
    ) -> Result<(), EvalError> {
        let Value::Array(items) = v else {
            return self.missing(lenient, &format!("[{i}]"));
        };
        let len = items.len();
        let at = if i < 0 { i + len as i64 } else { i };
        match usize::try_from(at).ok().and_then(|at| items.get(at)) {
            Some(x) => out.push(x),
            None if lenient || self.allow_missing => {}
            None => {
                return Err(EvalError::OutOfBounds {
                    template: self.template.to_string(),
                    index: i,
                    len,
                });
            }
        }
        Ok(())
    }

    fn holds(&self, f: &Filter, item: &'a Value) -> Result<bool, EvalError> {
        let lenient = Eval {
            allow_missing: true,
            ..*self
        };
        let value = |o: &Operand| -> Result<Option<Value>, EvalError> {
            Ok(match o {
                Operand::Const(c) => Some(c.clone()),
                Operand::Path(p) => lenient.path(p, item)?.first().map(|v| (*v).clone()),
            })
        };
        let Some(left) = value(&f.left)? else {
            return Ok(false);
        };
        let Some((op, right)) = &f.compare else {
            return Ok(true);
        };
        let Some(right) = value(right)? else {
            return Ok(false);
        };
        Ok(compare(&left, *op, &right))
    }
}

fn children(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Object(m) => m.values().collect(),
        _ => Vec::new(),
    }
}

fn descend<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(v);
    for c in children(v) {
        descend(c, out);
    }
}

/// Python's slice semantics: negative bounds count from the end, a negative step walks back.
fn slice(items: &[Value], start: Option<i64>, end: Option<i64>, step: i64) -> Vec<&Value> {
    let len = items.len() as i64;
    let clamp = |i: i64, lo: i64, hi: i64| {
        let i = if i < 0 { i + len } else { i };
        i.clamp(lo, hi)
    };
    let mut out = Vec::new();
    if step > 0 {
        let (mut i, e) = (
            clamp(start.unwrap_or(0), 0, len),
            clamp(end.unwrap_or(len), 0, len),
        );
        while i < e {
            out.extend(items.get(i as usize));
            i += step;
        }
    } else {
        let mut i = start.map(|s| clamp(s, -1, len - 1)).unwrap_or(len - 1);
        let e = end.map(|e| clamp(e, -1, len - 1)).unwrap_or(-1);
        while i > e {
            out.extend(usize::try_from(i).ok().and_then(|i| items.get(i)));
            i += step;
        }
    }
    out
}

fn compare(l: &Value, op: Op, r: &Value) -> bool {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (l, r) {
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .zip(b.as_f64())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => (l == r).then_some(Ordering::Equal),
    };
    match op {
        Op::Eq => ord == Some(Ordering::Equal),
        Op::Ne => ord != Some(Ordering::Equal),
        Op::Lt => ord == Some(Ordering::Less),
        Op::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => ord == Some(Ordering::Greater),
        Op::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// A value as a template prints it: strings bare, objects and arrays as compact JSON.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
