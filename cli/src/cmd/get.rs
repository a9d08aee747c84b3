//! `topoctl get`: tables (or `-o` documents, JSONPath, custom columns) of objects and, with
//! `-w`, the changes that follow; `--raw PATH` prints any API path's body.
//!
//! Shaped as the verb runs: the arguments become a [`Request`] (kinds, each with the names
//! asked for — `get c db`, `get container/db network/overlay`, `get c,net`), each kind is
//! fetched (the named objects, or a list that also starts the watch), sorted (`--sort-by`),
//! printed once through a [`Printer`], names not found are reported, then the watches are
//! followed, rows aligned with the first table.

use std::collections::BTreeMap;

use chrono::Utc;
use tokio::sync::mpsc;
use topo_schema::api::List;
use topo_schema::{Kind, ObjectRef, Resource};

use super::{CliError, Ctx, check_selector, emit, emit_bytes, parse_kind, warn};
use crate::args;
use crate::client::Client;
use crate::jsonpath::Expr;
use crate::output::{self, Format, column_widths, render_table};
use crate::printer::{self, Printer, PrinterError};
use crate::watch;

/// Column widths per table as first printed (per kind; `None`: the custom-columns table),
/// so rows that follow line up.
type Widths = BTreeMap<Option<Kind>, Vec<usize>>;

/// What the arguments ask for: per kind, the names (none: every object of the kind).
#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    wants: Vec<(Kind, Vec<String>)>,
    /// Rows name objects `kind/name` (more than one kind asked for).
    qualified: bool,
}

impl Request {
    /// `KIND [NAME...]`, `KIND,KIND [NAME...]`, `all`, or `KIND/NAME...` (kinds mixed).
    pub(crate) fn parse(targets: &[String]) -> Result<Request, CliError> {
        let Some((first, rest)) = targets.split_first() else {
            return Err(CliError::Usage(
                "you must specify the kind of object to get: nodes, networks, containers, links, tunnels or all (or KIND/NAME)".into(),
            ));
        };
        if targets.iter().any(|t| t.contains('/')) {
            return Request::by_ref(targets);
        }
        let mut kinds: Vec<Kind> = Vec::new();
        for k in first.split(',') {
            let more = if k.eq_ignore_ascii_case("all") {
                Kind::ALL.to_vec()
            } else {
                vec![parse_kind(k)?]
            };
            for k in more {
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
        }
        if first.split(',').any(|k| k.eq_ignore_ascii_case("all")) && !rest.is_empty() {
            return Err(CliError::Usage("names cannot be given with `all`".into()));
        }
        Ok(Request {
            qualified: kinds.len() > 1,
            wants: kinds.into_iter().map(|k| (k, rest.to_vec())).collect(),
        })
    }

    /// `container/db network/overlay container/web`: grouped by kind, in order of first
    /// appearance.
    fn by_ref(targets: &[String]) -> Result<Request, CliError> {
        let mut wants: Vec<(Kind, Vec<String>)> = Vec::new();
        for t in targets {
            if !t.contains('/') {
                return Err(CliError::Usage(format!(
                    "there is no need to name a kind as a separate argument when passing arguments in KIND/NAME form (e.g. 'topoctl get container/db' instead of 'topoctl get container container/db'); got {t:?}"
                )));
            }
            let r = super::parse_ref(t)?;
            match wants.iter_mut().find(|(k, _)| *k == r.kind) {
                Some((_, names)) => names.push(r.name),
                None => wants.push((r.kind, vec![r.name])),
            }
        }
        Ok(Request {
            qualified: wants.len() > 1,
            wants,
        })
    }

    fn named(&self) -> usize {
        self.wants.iter().map(|(_, n)| n.len()).sum()
    }

    fn wants(&self, o: &Resource) -> bool {
        self.wants.iter().any(|(k, names)| {
            *k == o.kind() && (names.is_empty() || names.iter().any(|n| n == o.name()))
        })
    }
}

/// What `get` fetched: per kind the objects to show, the lists to watch from (with `-w`),
/// and the names that were not found.
#[derive(Default)]
struct Fetched {
    shown: Vec<(Kind, Vec<Resource>)>,
    lists: Vec<(Kind, List<Resource>)>,
    failures: Vec<CliError>,
}

impl Fetched {
    fn all(&self) -> Vec<Resource> {
        self.shown.iter().flat_map(|(_, o)| o.clone()).collect()
    }
}

pub(crate) async fn get(ctx: &Ctx, a: args::GetArgs) -> Result<i32, CliError> {
    if let Some(path) = &a.raw {
        return raw(ctx, path).await;
    }
    let printer = Printer::parse(a.output.as_deref(), a.allow_missing_template_keys)?;
    let sort_by = a
        .sort_by
        .as_deref()
        .map(Expr::parse_relaxed)
        .transpose()
        .map_err(PrinterError::from)?;
    let req = Request::parse(&a.targets)?;
    if req.named() > 0 && a.selector.is_some() {
        return Err(CliError::Usage(
            "names cannot be given together with a label selector (-l)".into(),
        ));
    }
    check_selector(a.selector.as_deref())?;
    let client = ctx.client()?;
    let mut fetched = fetch(&client, &req, &a).await?;
    if let Some(by) = &sort_by {
        printer::check_sort_field(fetched.shown.iter().flat_map(|(_, o)| o), by)?;
        for (_, objs) in &mut fetched.shown {
            printer::sort_objects(objs, by);
        }
    }
    let widths = print(&fetched, &req, &printer, sort_by.as_ref())?;
    if !fetched.failures.is_empty() {
        let n = fetched.failures.len();
        for f in fetched.failures {
            warn(&format!("error: {f}"));
        }
        return Err(CliError::Reported(format!("{n} of the named objects")));
    }
    if !a.watch {
        return Ok(0);
    }
    follow(&client, &req, &a, &fetched.lists, &printer, widths).await
}

/// Named objects one by one; otherwise (and always with `-w`, which watches from the
/// list's revision) a list, filtered by name.
async fn fetch(client: &Client, req: &Request, a: &args::GetArgs) -> Result<Fetched, CliError> {
    let mut f = Fetched::default();
    for (kind, names) in &req.wants {
        if !names.is_empty() && !a.watch {
            let mut objs = Vec::new();
            for n in names {
                match client.get(*kind, n).await {
                    Ok(o) => objs.push(o),
                    Err(e) if e.is_not_found() => f
                        .failures
                        .push(CliError::NotFound(ObjectRef::new(*kind, n.as_str()))),
                    Err(e) => return Err(e.into()),
                }
            }
            f.shown.push((*kind, objs));
            continue;
        }
        let list = client.list(*kind, a.selector.as_deref()).await?;
        let mut objs: Vec<Resource> = list
            .items
            .iter()
            .filter(|o| names.is_empty() || names.iter().any(|n| n == o.name()))
            .cloned()
            .collect();
        objs.sort_by(|x, y| x.name().cmp(y.name()));
        for n in names {
            if !objs.iter().any(|o| o.name() == n) {
                f.failures
                    .push(CliError::NotFound(ObjectRef::new(*kind, n.as_str())));
            }
        }
        f.shown.push((*kind, objs));
        f.lists.push((*kind, list));
    }
    Ok(f)
}

/// Prints what was fetched; returns the tables' column widths.
fn print(
    fetched: &Fetched,
    req: &Request,
    printer: &Printer,
    sort_by: Option<&Expr>,
) -> Result<Widths, CliError> {
    let mut widths = Widths::new();
    let mut items = fetched.all();
    if let Some(by) = sort_by {
        // One list across kinds (for a table, each kind's own order is already sorted).
        printer::sort_objects(&mut items, by);
    }
    let single = req.named() == 1 && items.len() == 1 && !req.qualified;
    let none_found = items.is_empty() && fetched.failures.is_empty();
    match printer {
        Printer::Builtin(Format::Table | Format::Wide) => {
            let wide = *printer == Printer::Builtin(Format::Wide);
            emit(&tables(fetched, req.qualified, wide, &mut widths))?;
        }
        Printer::Builtin(Format::Name) => emit(&output::names(&items))?,
        Printer::Builtin(format @ (Format::Json | Format::Yaml)) => {
            if single {
                emit(&output::document(&items[0], *format)?)?;
            } else if !(req.named() == 1 && items.is_empty()) {
                emit(&output::list_document(items, *format)?)?;
            }
        }
        Printer::JsonPath {
            template,
            allow_missing,
        } => {
            let data = if single {
                items[0].to_value()
            } else {
                serde_json::to_value(List::new(items, None)).unwrap_or_default()
            };
            emit(
                &template
                    .render(&data, *allow_missing)
                    .map_err(PrinterError::from)?,
            )?;
        }
        Printer::Columns(cols) => {
            if !items.is_empty() {
                let header = printer::column_header(cols);
                let rows: Vec<Vec<String>> =
                    items.iter().map(|o| printer::column_row(cols, o)).collect();
                widths.insert(None, column_widths(&header, &rows));
                emit(&render_table(&header, &rows, true, &[]))?;
            }
        }
    }
    let tabular = matches!(
        printer,
        Printer::Builtin(Format::Table | Format::Wide) | Printer::Columns(_)
    );
    if tabular && none_found {
        warn("No resources found.");
    }
    Ok(widths)
}

/// One table per kind, blank lines between.
fn tables(fetched: &Fetched, qualified: bool, wide: bool, widths: &mut Widths) -> String {
    let now = Utc::now();
    let mut blocks = Vec::new();
    for (kind, objs) in &fetched.shown {
        if objs.is_empty() {
            continue;
        }
        let header = output::header(*kind, wide);
        let rows: Vec<Vec<String>> = objs
            .iter()
            .map(|o| output::row(o, wide, qualified, now))
            .collect();
        widths.insert(Some(*kind), column_widths(&header, &rows));
        blocks.push(render_table(&header, &rows, true, &[]));
    }
    blocks.join("\n")
}

/// `-w`: watches every listed kind and prints each change as it comes.
async fn follow(
    client: &Client,
    req: &Request,
    a: &args::GetArgs,
    lists: &[(Kind, List<Resource>)],
    printer: &Printer,
    mut widths: Widths,
) -> Result<i32, CliError> {
    let (tx, mut rx) = mpsc::channel(256);
    for (kind, list) in lists {
        watch::spawn(client.clone(), *kind, a.selector.clone(), list, tx.clone());
    }
    drop(tx);
    while let Some(update) = rx.recv().await {
        let u = update?;
        if !req.wants(&u.object) {
            continue;
        }
        emit(&changed_line(
            &u.object,
            printer,
            req.qualified,
            &mut widths,
        )?)?;
    }
    Ok(0)
}

/// How `-w` prints one changed object.
fn changed_line(
    object: &Resource,
    printer: &Printer,
    qualified: bool,
    widths: &mut Widths,
) -> Result<String, CliError> {
    let aligned = |key: Option<Kind>,
                   header: Vec<String>,
                   row: Vec<String>,
                   widths: &mut Widths| {
        match widths.get(&key) {
            Some(w) => render_table(&header, &[row], false, w),
            None => {
                let rows = vec![row];
                widths.insert(key, column_widths(&header, &rows));
                render_table(&header, &rows, true, &[])
            }
        }
    };
    Ok(match printer {
        Printer::Builtin(format @ (Format::Table | Format::Wide)) => {
            let kind = object.kind();
            let wide = *format == Format::Wide;
            let header = output::header(kind, wide);
            let row = output::row(object, wide, qualified, Utc::now());
            aligned(Some(kind), header, row, widths)
        }
        Printer::Builtin(Format::Name) => format!("{}\n", output::kind_name(object)),
        Printer::Builtin(format) => {
            let mut s = output::document(object, *format)?;
            if *format == Format::Yaml {
                s.insert_str(0, "---\n");
            }
            s
        }
        Printer::JsonPath {
            template,
            allow_missing,
        } => template
            .render(&object.to_value(), *allow_missing)
            .map_err(PrinterError::from)?,
        Printer::Columns(cols) => aligned(
            None,
            printer::column_header(cols),
            printer::column_row(cols, object),
            widths,
        ),
    })
}

/// `get --raw PATH`: the body of a GET of any path of the controller, as it comes (a
/// watch path streams).
async fn raw(ctx: &Ctx, path: &str) -> Result<i32, CliError> {
    if !path.starts_with('/') {
        return Err(CliError::Usage(format!(
            "--raw takes an absolute path such as /apis/topo.dev/v1alpha1/containers; got {path:?}"
        )));
    }
    let client = ctx.client()?;
    let mut body = client.raw(path).await?;
    let mut last = b'\n';
    while let Some(chunk) = body.next_chunk().await? {
        if let Some(b) = chunk.last() {
            last = *b;
        }
        emit_bytes(&chunk)?;
    }
    if last != b'\n' {
        emit("\n")?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::container;

    fn parse(args: &[&str]) -> Result<Request, CliError> {
        Request::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn targets_as_kubectl_takes_them() {
        let r = parse(&["c", "db", "web"]).unwrap();
        assert_eq!(
            r.wants,
            [(Kind::Container, vec!["db".into(), "web".into()])]
        );
        assert!(!r.qualified);
        let r = parse(&["container/db", "network/overlay", "c/web"]).unwrap();
        assert_eq!(
            r.wants,
            [
                (Kind::Container, vec!["db".into(), "web".into()]),
                (Kind::Network, vec!["overlay".into()])
            ]
        );
        assert!(r.qualified);
        let r = parse(&["c,net"]).unwrap();
        assert_eq!(
            r.wants,
            [(Kind::Container, vec![]), (Kind::Network, vec![])]
        );
        assert_eq!(parse(&["all"]).unwrap().wants.len(), 5);
        for (bad, why) in [
            (&[][..], "you must specify the kind"),
            (&["c", "c/db"][..], "no need to name a kind"),
            (&["all", "x"][..], "names cannot be given with `all`"),
            (&["pods/x"][..], "unknown kind \"pods\""),
            (&["c/"][..], "expected KIND/NAME"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn watched_changes_print_as_the_first_table() {
        let now = Utc::now();
        let cols =
            Printer::Columns(printer::columns("NAME:.metadata.name,NODE:.spec.node").unwrap());
        let first = printer::columns_table(
            match &cols {
                Printer::Columns(c) => c,
                _ => unreachable!(),
            },
            &[container("a-longer-name", now)],
        );
        let header = first.lines().next().unwrap_or_default().to_string();
        let mut widths = Widths::new();
        widths.insert(None, vec!["a-longer-name".len(), "NODE".len()]);
        let line = changed_line(&container("db", now), &cols, false, &mut widths).unwrap();
        assert!(!line.contains("NAME"), "no second header: {line}");
        assert_eq!(
            line.find("node4"),
            header.find("NODE"),
            "aligned with {first}"
        );
        let mut fresh = Widths::new();
        let line = changed_line(&container("db", now), &cols, false, &mut fresh).unwrap();
        assert_eq!(
            line, "NAME   NODE\ndb     node4\n",
            "the first row brings its header"
        );
        let jp = Printer::parse(Some("jsonpath={.metadata.name}{\"\\n\"}"), true).unwrap();
        let line = changed_line(&container("db", now), &jp, false, &mut widths).unwrap();
        assert_eq!(line, "db\n");
    }
}
