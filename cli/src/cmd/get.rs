//! `topoctl get`: tables (or `-o` documents) of objects and, with `-w`, the changes that
//! follow.
//!
//! Shaped as the verb runs: the arguments are checked, each kind is fetched (the named
//! objects, or a list that also starts the watch), everything is printed once, names not
//! found are reported, then the watches are followed, rows aligned with the first table.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use tokio::sync::mpsc;
use topo_schema::api::List;
use topo_schema::{Kind, ObjectRef, Resource};

use super::{CliError, Ctx, check_selector, emit, output_format, parse_kind, warn};
use crate::args;
use crate::client::Client;
use crate::output::{self, Format, column_widths, render_table};
use crate::watch;

/// Column widths per kind, as first printed, so rows that follow line up.
type Widths = BTreeMap<Kind, Vec<usize>>;

/// What `get` fetched: per kind the objects to show, the lists to watch from (with `-w`),
/// and the names that were not found.
#[derive(Default)]
struct Fetched {
    shown: Vec<(Kind, Vec<Resource>)>,
    lists: Vec<(Kind, List<Resource>)>,
    failures: Vec<CliError>,
}

pub(crate) async fn get(ctx: &Ctx, a: args::GetArgs) -> Result<i32, CliError> {
    let format = output_format(a.output.as_deref());
    let all = a.kind.eq_ignore_ascii_case("all");
    let kinds = kinds_of(&a, all)?;
    let client = ctx.client()?;
    let fetched = fetch(&client, &a, &kinds).await?;
    let widths = print(&fetched, &a, format, all)?;
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
    follow(&client, &a, &fetched.lists, format, all, widths).await
}

/// The kinds asked for, once the arguments are known to fit together.
fn kinds_of(a: &args::GetArgs, all: bool) -> Result<Vec<Kind>, CliError> {
    let kinds: Vec<Kind> = if all {
        Kind::ALL.to_vec()
    } else {
        vec![parse_kind(&a.kind)?]
    };
    if all && !a.names.is_empty() {
        return Err(CliError::Usage("names cannot be given with `all`".into()));
    }
    if !a.names.is_empty() && a.selector.is_some() {
        return Err(CliError::Usage(
            "names cannot be given together with a label selector (-l)".into(),
        ));
    }
    check_selector(a.selector.as_deref())?;
    Ok(kinds)
}

/// Named objects one by one; otherwise (and always with `-w`, which watches from the
/// list's revision) a list, filtered by name.
async fn fetch(client: &Client, a: &args::GetArgs, kinds: &[Kind]) -> Result<Fetched, CliError> {
    let mut f = Fetched::default();
    for kind in kinds {
        if !a.names.is_empty() && !a.watch {
            let mut objs = Vec::new();
            for n in &a.names {
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
            .filter(|o| a.names.is_empty() || a.names.iter().any(|n| n == o.name()))
            .cloned()
            .collect();
        objs.sort_by(|x, y| x.name().cmp(y.name()));
        if a.watch {
            for n in &a.names {
                if !objs.iter().any(|o| o.name() == n) {
                    f.failures
                        .push(CliError::NotFound(ObjectRef::new(*kind, n.as_str())));
                }
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
    a: &args::GetArgs,
    format: Format,
    all: bool,
) -> Result<Widths, CliError> {
    let shown = &fetched.shown;
    let mut widths = Widths::new();
    match format {
        Format::Table | Format::Wide => {
            let now = Utc::now();
            let wide = format == Format::Wide;
            let mut blocks = Vec::new();
            for (kind, objs) in shown {
                if objs.is_empty() {
                    continue;
                }
                let header = output::header(*kind, wide);
                let rows: Vec<Vec<String>> = objs
                    .iter()
                    .map(|o| output::row(o, wide, all, now))
                    .collect();
                widths.insert(*kind, column_widths(&header, &rows));
                blocks.push(render_table(&header, &rows, true, &[]));
            }
            emit(&blocks.join("\n"))?;
            let total: usize = shown.iter().map(|(_, o)| o.len()).sum();
            if total == 0 && fetched.failures.is_empty() {
                warn("No resources found.");
            }
        }
        Format::Name => emit(&output::names(
            &shown
                .iter()
                .flat_map(|(_, o)| o.clone())
                .collect::<Vec<_>>(),
        ))?,
        Format::Json | Format::Yaml => {
            let items: Vec<Resource> = shown.iter().flat_map(|(_, o)| o.clone()).collect();
            if a.names.len() == 1 && items.len() == 1 && !all {
                emit(&output::document(&items[0], format)?)?;
            } else if !(a.names.len() == 1 && items.is_empty()) {
                emit(&output::list_document(items, format)?)?;
            }
        }
    }
    Ok(widths)
}

/// `-w`: watches every listed kind and prints each change as it comes.
async fn follow(
    client: &Client,
    a: &args::GetArgs,
    lists: &[(Kind, List<Resource>)],
    format: Format,
    all: bool,
    mut widths: Widths,
) -> Result<i32, CliError> {
    let names: BTreeSet<&str> = a.names.iter().map(String::as_str).collect();
    let (tx, mut rx) = mpsc::channel(256);
    for (kind, list) in lists {
        watch::spawn(client.clone(), *kind, a.selector.clone(), list, tx.clone());
    }
    drop(tx);
    while let Some(update) = rx.recv().await {
        let u = update?;
        if !names.is_empty() && !names.contains(u.object.name()) {
            continue;
        }
        let text = match format {
            Format::Table | Format::Wide => {
                let kind = u.object.kind();
                let wide = format == Format::Wide;
                let header = output::header(kind, wide);
                let row = output::row(&u.object, wide, all, Utc::now());
                match widths.get(&kind) {
                    Some(w) => render_table(&header, &[row], false, w),
                    None => {
                        let rows = vec![row];
                        widths.insert(kind, column_widths(&header, &rows));
                        render_table(&header, &rows, true, &[])
                    }
                }
            }
            Format::Name => format!("{}\n", output::kind_name(&u.object)),
            Format::Json | Format::Yaml => {
                let mut s = output::document(&u.object, format)?;
                if format == Format::Yaml {
                    s.insert_str(0, "---\n");
                }
                s
            }
        };
        emit(&text)?;
    }
    Ok(0)
}
