//! The verbs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::Utc;
use clap::CommandFactory;
use tokio::sync::mpsc;
use topo_schema::api::{ApiError, ApplyAction, ApplyRequest, Event, LabelSelector, WatchEventType};
use topo_schema::{Kind, ObjectRef, Resource};

use crate::args::{self, Cli, Command, DryRun};
use crate::client::{Client, ClientError, format_api_error};
use crate::config::{ConfigError, Env, resolve};
use crate::describe::{EventsSection, describe};
use crate::inputs::{self, InputError};
use crate::output::{self, Format, OutputError, column_widths, render_table};
use crate::timefmt::{format_duration, human_duration};
use crate::waiter::{self, Goal, Outcome, Progress};
use crate::watch;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// Manifests that do not parse or validate here; nothing was sent.
    #[error("{}", format_api_error(.0))]
    Invalid(ApiError),
    #[error("{} {:?} not found", .0.kind.as_str().to_ascii_lowercase(), .0.name)]
    NotFound(ObjectRef),
    #[error("{0}")]
    Usage(String),
    #[error("timed out after {after} waiting for {pending_count} of {total} objects ({goal}):{}", list_pending(.pending))]
    TimedOut {
        after: String,
        goal: String,
        total: usize,
        pending_count: usize,
        pending: Vec<(ObjectRef, String)>,
    },
    /// Already reported on stderr, one line per failure.
    #[error("{0} failed")]
    Reported(String),
    #[error("failed to write output: {0}")]
    Write(#[source] std::io::Error),
}

fn list_pending(p: &[(ObjectRef, String)]) -> String {
    p.iter().map(|(o, why)| format!("\n  {o}: {why}")).collect()
}

impl CliError {
    fn timed_out(
        timeout: Duration,
        goal: &Goal,
        total: usize,
        pending: Vec<(ObjectRef, String)>,
    ) -> CliError {
        let goal = match goal {
            Goal::Condition { type_, status } => format!("{type_}={status}"),
            Goal::Deleted => "to be deleted".into(),
        };
        CliError::TimedOut {
            after: format_duration(timeout),
            goal,
            total,
            pending_count: pending.len(),
            pending,
        }
    }

    /// Output to a closed pipe (`topoctl get c | head`) is no failure worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Write(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Writes to stdout without panicking on a closed pipe.
fn emit(s: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|_| out.flush())
        .map_err(CliError::Write)
}

fn warn(s: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

pub struct Ctx {
    pub server_flag: Option<String>,
    pub env: Env,
    pub request_timeout: Duration,
}

impl Ctx {
    fn client(&self) -> Result<Client, CliError> {
        let conn = resolve(self.server_flag.as_deref(), &self.env)?;
        Ok(Client::new(&conn, Some(self.request_timeout))?)
    }
}

/// Runs one command; the exit status on success (diff's 1 means "changes").
pub async fn run(cli: Cli, env: Env) -> Result<i32, CliError> {
    let ctx = Ctx {
        server_flag: cli.server,
        env,
        request_timeout: cli.request_timeout,
    };
    match cli.command {
        Command::Apply(a) => apply(&ctx, a).await,
        Command::Get(a) => get(&ctx, a).await,
        Command::Describe(a) => describe_cmd(&ctx, a).await,
        Command::Delete(a) => delete(&ctx, a).await,
        Command::Diff(a) => diff(&ctx, a).await,
        Command::Wait(a) => wait(&ctx, a).await,
        Command::Events(a) => events(&ctx, a).await,
        Command::Schema(a) => schema(a),
        Command::Completion(a) => completion(a),
        Command::Version(a) => version(&ctx, a).await,
    }
}

/// `KIND` as typed (`c`, `containers`, `Container`).
pub fn parse_kind(s: &str) -> Result<Kind, CliError> {
    Kind::parse(s).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown kind {s:?}: expected nodes, networks, containers, links or tunnels (or no, net, c, ln, tun)"
        ))
    })
}

/// `KIND/NAME`.
pub fn parse_ref(s: &str) -> Result<ObjectRef, CliError> {
    let (k, n) = s.split_once('/').ok_or_else(|| {
        CliError::Usage(format!(
            "invalid object {s:?}: expected KIND/NAME, e.g. container/redis"
        ))
    })?;
    if n.is_empty() || n.contains('/') {
        return Err(CliError::Usage(format!(
            "invalid object {s:?}: expected KIND/NAME, e.g. container/redis"
        )));
    }
    Ok(ObjectRef::new(parse_kind(k)?, n))
}

/// `KIND/NAME...`, or `KIND NAME...`.
pub fn parse_refs(args: &[String]) -> Result<Vec<ObjectRef>, CliError> {
    match args {
        [first, rest @ ..] if !first.contains('/') && !rest.is_empty() => {
            let kind = parse_kind(first)?;
            Ok(rest
                .iter()
                .map(|n| ObjectRef::new(kind, n.as_str()))
                .collect())
        }
        [only] if !only.contains('/') => Err(CliError::Usage(format!(
            "invalid object {only:?}: expected KIND/NAME (e.g. container/redis) or KIND NAME"
        ))),
        _ => args.iter().map(|a| parse_ref(a)).collect(),
    }
}

fn check_selector(s: Option<&str>) -> Result<(), CliError> {
    if let Some(s) = s {
        LabelSelector::parse(s).map_err(CliError::Usage)?;
    }
    Ok(())
}

fn read_manifests(
    files: &args::FileArgs,
) -> Result<(Vec<topo_schema::api::SourceFile>, Vec<Resource>), CliError> {
    if files.filename.is_empty() {
        return Err(CliError::Usage(
            "no manifests: pass -f FILE, -f DIR or -f -".into(),
        ));
    }
    let sources = read_sources(files)?;
    let objects = crate::manifests::parse(&sources).map_err(CliError::Invalid)?;
    objects_or_usage(sources, objects)
}

fn read_sources(files: &args::FileArgs) -> Result<Vec<topo_schema::api::SourceFile>, CliError> {
    if files.filename.is_empty() {
        return Err(CliError::Usage(
            "no manifests: pass -f FILE, -f DIR or -f -".into(),
        ));
    }
    Ok(inputs::collect(
        &files.filename,
        files.recursive,
        &mut std::io::stdin().lock(),
    )?)
}

fn objects_or_usage(
    sources: Vec<topo_schema::api::SourceFile>,
    objects: Vec<Resource>,
) -> Result<(Vec<topo_schema::api::SourceFile>, Vec<Resource>), CliError> {
    if objects.is_empty() {
        return Err(CliError::Usage(
            "no objects passed (the files hold no documents)".into(),
        ));
    }
    Ok((sources, objects))
}

async fn get_opt(client: &Client, r: &ObjectRef) -> Result<Option<Resource>, ClientError> {
    match client.get(r.kind, &r.name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a client dry run says of an object, against the live one.
pub fn classify(new: &Resource, live: Option<&Resource>) -> ApplyAction {
    match live {
        None => ApplyAction::Created,
        Some(l)
            if l.spec_value() == new.spec_value()
                && l.metadata().labels == new.metadata().labels
                && l.metadata().annotations == new.metadata().annotations =>
        {
            ApplyAction::Unchanged
        }
        Some(_) => ApplyAction::Configured,
    }
}

fn progress_for_terminal(total: usize) -> Box<dyn Progress> {
    if std::io::stdout().is_terminal() {
        Box::new(waiter::Bar::new(total))
    } else {
        Box::new(waiter::PlainLines::new(std::io::stdout()))
    }
}

async fn apply(ctx: &Ctx, a: args::ApplyArgs) -> Result<i32, CliError> {
    let sources = read_sources(&a.files)?;
    let client = ctx.client()?;
    let objects = match crate::manifests::parse(&sources) {
        Ok(objects) => objects,
        // Locally only the errors within the files are known; the server also checks them
        // against what it holds (addresses held, networks that exist) and reports every
        // error in one round. A dry run, so nothing can change even if it disagreed.
        Err(local) if a.dry_run != DryRun::Client => {
            let req = ApplyRequest {
                files: sources,
                dry_run: true,
            };
            return Err(match client.apply(&req).await {
                Err(e) if e.reason() == Some(topo_schema::api::ErrorReason::Invalid) => e.into(),
                _ => CliError::Invalid(local),
            });
        }
        Err(local) => return Err(CliError::Invalid(local)),
    };
    let (sources, objects) = objects_or_usage(sources, objects)?;
    if a.dry_run == DryRun::Client {
        let mut out = String::new();
        for o in &objects {
            let live = get_opt(&client, &o.object_ref()).await?;
            out.push_str(&format!(
                "{} {} (dry run)\n",
                o.object_ref(),
                classify(o, live.as_ref())
            ));
        }
        emit(&out)?;
        return Ok(0);
    }
    let server_dry = a.dry_run == DryRun::Server;
    let resp = client
        .apply(&ApplyRequest {
            files: sources,
            dry_run: server_dry,
        })
        .await?;
    let suffix = if server_dry { " (server dry run)" } else { "" };
    let mut out = String::new();
    for r in &resp.results {
        out.push_str(&format!("{} {}{suffix}\n", r.object, r.action));
    }
    emit(&out)?;
    if !a.wait || server_dry {
        return Ok(0);
    }
    let targets: Vec<ObjectRef> = resp
        .results
        .iter()
        .filter(|r| r.action != ApplyAction::Deleted)
        .map(|r| r.object.clone())
        .collect();
    if targets.is_empty() {
        return Ok(0);
    }
    let goal = Goal::ready();
    let mut progress = progress_for_terminal(targets.len());
    match waiter::wait_for(&client, &targets, &goal, a.timeout, progress.as_mut()).await? {
        Outcome::Met => Ok(0),
        Outcome::TimedOut(pending) => Err(CliError::timed_out(
            a.timeout,
            &goal,
            targets.len(),
            pending,
        )),
    }
}

fn output_format(o: Option<&str>) -> Format {
    o.and_then(Format::parse).unwrap_or(Format::Table)
}

async fn get(ctx: &Ctx, a: args::GetArgs) -> Result<i32, CliError> {
    let format = output_format(a.output.as_deref());
    let all = a.kind.eq_ignore_ascii_case("all");
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
    let client = ctx.client()?;

    // Per kind: the objects to show, and the list it came from (for -w).
    let mut shown: Vec<(Kind, Vec<Resource>)> = Vec::new();
    let mut lists = Vec::new();
    let mut failures = Vec::new();
    for kind in &kinds {
        if !a.names.is_empty() && !a.watch {
            let mut objs = Vec::new();
            for n in &a.names {
                match client.get(*kind, n).await {
                    Ok(o) => objs.push(o),
                    Err(e) if e.is_not_found() => {
                        failures.push(CliError::NotFound(ObjectRef::new(*kind, n.as_str())))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            shown.push((*kind, objs));
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
                    failures.push(CliError::NotFound(ObjectRef::new(*kind, n.as_str())));
                }
            }
        }
        shown.push((*kind, objs));
        lists.push((*kind, list));
    }

    let now = Utc::now();
    let total: usize = shown.iter().map(|(_, o)| o.len()).sum();
    let mut widths: BTreeMap<Kind, Vec<usize>> = BTreeMap::new();
    let wide = format == Format::Wide;
    match format {
        Format::Table | Format::Wide => {
            let mut blocks = Vec::new();
            for (kind, objs) in &shown {
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
            if total == 0 && failures.is_empty() {
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
            let items: Vec<Resource> = shown.into_iter().flat_map(|(_, o)| o).collect();
            if a.names.len() == 1 && items.len() == 1 && !all {
                emit(&output::document(&items[0], format)?)?;
            } else if !(a.names.len() == 1 && items.is_empty()) {
                emit(&output::list_document(items, format)?)?;
            }
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        for f in failures {
            warn(&format!("error: {f}"));
        }
        return Err(CliError::Reported(format!("{n} of the named objects")));
    }
    if !a.watch {
        return Ok(0);
    }

    let names: BTreeSet<&str> = a.names.iter().map(String::as_str).collect();
    let (tx, mut rx) = mpsc::channel(256);
    for (kind, list) in &lists {
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

async fn describe_cmd(ctx: &Ctx, a: args::DescribeArgs) -> Result<i32, CliError> {
    let kind = parse_kind(&a.kind)?;
    if !a.names.is_empty() && a.selector.is_some() {
        return Err(CliError::Usage(
            "names cannot be given together with a label selector (-l)".into(),
        ));
    }
    check_selector(a.selector.as_deref())?;
    let client = ctx.client()?;
    let mut objects = Vec::new();
    let mut failures = Vec::new();
    if a.names.is_empty() {
        let mut list = client.list(kind, a.selector.as_deref()).await?.items;
        list.sort_by(|x, y| x.name().cmp(y.name()));
        objects = list;
        if objects.is_empty() {
            warn("No resources found.");
        }
    } else {
        for n in &a.names {
            match client.get(kind, n).await {
                Ok(o) => objects.push(o),
                Err(e) if e.is_not_found() => {
                    failures.push(CliError::NotFound(ObjectRef::new(kind, n.as_str())))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut texts = Vec::new();
    for o in &objects {
        let events = client.events(Some(&o.object_ref())).await;
        let now = Utc::now();
        let text = match &events {
            Ok(list) => describe(o, EventsSection::Known(&list.items), now),
            Err(e) if e.is_not_found() => describe(o, EventsSection::Known(&[]), now),
            Err(e) => describe(o, EventsSection::Unavailable(e.to_string()), now),
        };
        texts.push(text);
    }
    emit(&texts.join("\n\n"))?;
    if !failures.is_empty() {
        let n = failures.len();
        for f in failures {
            warn(&format!("error: {f}"));
        }
        return Err(CliError::Reported(format!("{n} of the named objects")));
    }
    Ok(0)
}

/// After the objects left the API: waits until no agent reports any of them any more, i.e.
/// every node removed what it held for them (containers, veths, OVS ports, rules).
async fn wait_until_removed_from_nodes(
    client: &Client,
    deleted: &[ObjectRef],
    timeout: Duration,
) -> Result<Outcome, CliError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for r in deleted {
            let reports = client.reports(r.kind, &r.name).await?;
            if !reports.items.is_empty() {
                let reasons: Vec<&str> = reports
                    .items
                    .iter()
                    .map(|rep| rep.reason.as_str())
                    .collect();
                pending.push((
                    r.clone(),
                    format!("its node's agent still reports it ({})", reasons.join(", ")),
                ));
            }
        }
        if pending.is_empty() {
            return Ok(Outcome::Met);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(Outcome::TimedOut(pending));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kind "name", as kubectl says what it deleted.
fn quoted(r: &ObjectRef) -> String {
    format!("{} {:?}", r.kind.as_str().to_ascii_lowercase(), r.name)
}

/// Deletion order: what refers to others goes first (links, containers, ..., nodes).
fn deletion_order(mut refs: Vec<ObjectRef>) -> Vec<ObjectRef> {
    let rank = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap_or(0);
    // Tunnels refer to networks and nodes, links to containers: delete the referrers first.
    refs.sort_by_key(|r| std::cmp::Reverse(rank(r.kind)));
    let mut seen = BTreeSet::new();
    refs.retain(|r| seen.insert(r.clone()));
    refs
}

async fn delete(ctx: &Ctx, a: args::DeleteArgs) -> Result<i32, CliError> {
    let by_file = !a.files.filename.is_empty();
    if by_file && (a.kind.is_some() || a.selector.is_some()) {
        return Err(CliError::Usage(
            "give either -f FILE or KIND NAME..., not both".into(),
        ));
    }
    let targets: Vec<ObjectRef> = if by_file {
        let (_, objects) = read_manifests(&a.files)?;
        deletion_order(objects.iter().map(Resource::object_ref).collect())
    } else {
        let Some(kind) = a.kind.as_deref() else {
            return Err(CliError::Usage(
                "nothing to delete: give -f FILE, or KIND NAME...".into(),
            ));
        };
        // `delete container/redis link/x` works too.
        if kind.contains('/') {
            let mut all = vec![kind.to_string()];
            all.extend(a.names.iter().cloned());
            all.iter().map(|s| parse_ref(s)).collect::<Result<_, _>>()?
        } else {
            let kind = parse_kind(kind)?;
            if a.names.is_empty() && a.selector.is_none() {
                return Err(CliError::Usage(format!(
                    "name which {} to delete, or select them with -l",
                    kind.plural()
                )));
            }
            if !a.names.is_empty() && a.selector.is_some() {
                return Err(CliError::Usage(
                    "names cannot be given together with a label selector (-l)".into(),
                ));
            }
            check_selector(a.selector.as_deref())?;
            a.names
                .iter()
                .map(|n| ObjectRef::new(kind, n.as_str()))
                .collect()
        }
    };
    let client = ctx.client()?;
    let targets = match (&a.selector, targets.is_empty(), a.kind.as_deref()) {
        (Some(sel), true, Some(kind)) => {
            let kind = parse_kind(kind)?;
            let mut items = client.list(kind, Some(sel)).await?.items;
            items.sort_by(|x, y| x.name().cmp(y.name()));
            if items.is_empty() {
                warn("No resources found.");
            }
            items.iter().map(Resource::object_ref).collect()
        }
        _ => targets,
    };
    let suffix = match a.dry_run {
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
        DryRun::None => "",
    };
    let mut deleted = Vec::new();
    let mut failures = 0usize;
    for t in &targets {
        let result = match a.dry_run {
            DryRun::Client => match get_opt(&client, t).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(ClientError::Api(ApiError::new(
                    topo_schema::api::ErrorReason::NotFound,
                    format!("{} not found", quoted(t)),
                ))),
                Err(e) => Err(e),
            },
            mode => client.delete(t.kind, &t.name, mode == DryRun::Server).await,
        };
        match result {
            Ok(()) => {
                emit(&format!("{} deleted{suffix}\n", quoted(t)))?;
                deleted.push(t.clone());
            }
            Err(e) if e.is_not_found() => {
                if !a.ignore_not_found {
                    warn(&format!("error: {}", CliError::NotFound(t.clone())));
                    failures += 1;
                }
            }
            Err(e) if e.is_unreachable() => return Err(e.into()),
            Err(e) => {
                warn(&format!("error: {e}"));
                failures += 1;
            }
        }
    }
    if a.wait && a.dry_run == DryRun::None && !deleted.is_empty() {
        let goal = Goal::Deleted;
        let started = std::time::Instant::now();
        let outcome = match waiter::wait_for(
            &client,
            &deleted,
            &goal,
            a.timeout,
            &mut waiter::Quiet,
        )
        .await?
        {
            Outcome::Met => {
                let left = a.timeout.saturating_sub(started.elapsed());
                wait_until_removed_from_nodes(&client, &deleted, left).await?
            }
            timed_out => timed_out,
        };
        match outcome {
            Outcome::Met => {}
            Outcome::TimedOut(pending) => {
                return Err(CliError::timed_out(
                    a.timeout,
                    &goal,
                    deleted.len(),
                    pending,
                ));
            }
        }
    }
    if failures > 0 {
        return Err(CliError::Reported(format!(
            "deleting {failures} of {} objects",
            targets.len()
        )));
    }
    Ok(0)
}

async fn diff(ctx: &Ctx, a: args::DiffArgs) -> Result<i32, CliError> {
    let (sources, _) = read_manifests(&a.files)?;
    let client = ctx.client()?;
    let resp = client
        .apply(&ApplyRequest {
            files: sources,
            dry_run: true,
        })
        .await?;
    let mut diffs = Vec::new();
    for r in &resp.results {
        if r.action == ApplyAction::Unchanged {
            diffs.push(None);
            continue;
        }
        let live = match r.action {
            ApplyAction::Created => None,
            _ => get_opt(&client, &r.object).await?,
        };
        let merged = (r.action != ApplyAction::Deleted).then_some(&r.result);
        let d = crate::diff::unified(&r.object.to_string(), live.as_ref(), merged);
        if let Some(text) = &d {
            emit(text)?;
        }
        diffs.push(d);
    }
    Ok(crate::diff::exit_code(&diffs))
}

async fn wait(ctx: &Ctx, a: args::WaitArgs) -> Result<i32, CliError> {
    let targets = parse_refs(&a.objects)?;
    let goal = Goal::parse(&a.for_).map_err(CliError::Usage)?;
    let client = ctx.client()?;
    if matches!(goal, Goal::Condition { .. }) {
        for t in &targets {
            if get_opt(&client, t).await?.is_none() {
                return Err(CliError::NotFound(t.clone()));
            }
        }
    }
    let mut progress = waiter::MetLines::new(std::io::stdout(), goal.met_message());
    match waiter::wait_for(&client, &targets, &goal, a.timeout, &mut progress).await? {
        Outcome::Met => Ok(0),
        Outcome::TimedOut(pending) => Err(CliError::timed_out(
            a.timeout,
            &goal,
            targets.len(),
            pending,
        )),
    }
}

/// The events table's rows, oldest first.
pub fn event_rows(events: &[Event], now: chrono::DateTime<Utc>) -> Vec<Vec<String>> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.last_timestamp);
    sorted.iter().map(|e| event_row(e, now)).collect()
}

fn event_row(e: &Event, now: chrono::DateTime<Utc>) -> Vec<String> {
    vec![
        e.object.to_string(),
        format!("{:?}", e.type_),
        e.reason.clone(),
        human_duration(now - e.last_timestamp),
        e.count.to_string(),
        e.message.clone(),
    ]
}

pub fn event_header() -> Vec<String> {
    ["OBJECT", "TYPE", "REASON", "AGE", "COUNT", "MESSAGE"]
        .map(String::from)
        .to_vec()
}

async fn events(ctx: &Ctx, a: args::EventsArgs) -> Result<i32, CliError> {
    let object = a.for_.as_deref().map(parse_ref).transpose()?;
    let client = ctx.client()?;
    let list = client.events(object.as_ref()).await?;
    let header = event_header();
    let rows = event_rows(&list.items, Utc::now());
    let mut widths = column_widths(&header, &rows);
    if rows.is_empty() {
        if !a.watch {
            warn("No events found.");
        }
    } else {
        emit(&render_table(&header, &rows, true, &[]))?;
    }
    if !a.watch {
        return Ok(0);
    }
    let mut header_shown = !rows.is_empty();
    let mut rv = list.metadata.map(|m| m.resource_version);
    // (object, id) → count printed, so a relist prints only what is new.
    let mut seen: BTreeMap<(ObjectRef, String), u32> = list
        .items
        .iter()
        .map(|e| ((e.object.clone(), e.dedup_id()), e.count))
        .collect();
    let mut failures = 0u32;
    loop {
        let mut relist = false;
        match client.watch_events(object.as_ref(), rv.as_deref()).await {
            Ok(mut stream) => loop {
                match stream.next_event().await {
                    Ok(Some(ev)) => {
                        failures = 0;
                        match ev.type_ {
                            WatchEventType::Error => {
                                let err = ev.error.unwrap_or_else(|| {
                                    ApiError::new(
                                        topo_schema::api::ErrorReason::InternalError,
                                        "watch failed",
                                    )
                                });
                                if err.code == 410
                                    || err.reason == topo_schema::api::ErrorReason::Expired
                                {
                                    relist = true;
                                    break;
                                }
                                return Err(ClientError::Api(err).into());
                            }
                            WatchEventType::Bookmark => rv = Some(ev.resource_version),
                            WatchEventType::Deleted => rv = Some(ev.resource_version),
                            WatchEventType::Added | WatchEventType::Modified => {
                                rv = Some(ev.resource_version);
                                let Some(e) = ev.object else { continue };
                                let key = (e.object.clone(), e.dedup_id());
                                if seen.get(&key) == Some(&e.count) {
                                    continue;
                                }
                                seen.insert(key, e.count);
                                let row = vec![event_row(&e, Utc::now())];
                                let text = if header_shown {
                                    render_table(&header, &row, false, &widths)
                                } else {
                                    header_shown = true;
                                    widths = column_widths(&header, &row);
                                    render_table(&header, &row, true, &[])
                                };
                                emit(&text)?;
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        failures += 1;
                        break;
                    }
                }
            },
            Err(e) if e.reason() == Some(topo_schema::api::ErrorReason::Expired) => relist = true,
            Err(e) if e.is_unreachable() => failures += 1,
            Err(e) => return Err(e.into()),
        }
        if failures > 8 {
            return Err(CliError::Usage(format!(
                "lost the event watch at {} and could not resume it",
                client.server()
            )));
        }
        if failures > 0 {
            tokio::time::sleep(Duration::from_millis(200u64 << failures.min(6))).await;
        }
        if relist {
            let list = client.events(object.as_ref()).await?;
            rv = list.metadata.map(|m| m.resource_version);
            let mut fresh = Vec::new();
            for e in list.items {
                let key = (e.object.clone(), e.dedup_id());
                if seen.get(&key) != Some(&e.count) {
                    seen.insert(key, e.count);
                    fresh.push(e);
                }
            }
            let rows = event_rows(&fresh, Utc::now());
            if !rows.is_empty() {
                emit(&render_table(&header, &rows, !header_shown, &widths))?;
                header_shown = true;
            }
        }
    }
}

fn schema(a: args::SchemaArgs) -> Result<i32, CliError> {
    let kind = a.kind.as_deref().map(parse_kind).transpose()?;
    let v = topo_schema::jsonschema::schema_for(kind);
    emit(&output::document(&v, Format::Json)?)?;
    Ok(0)
}

fn completion(a: args::CompletionArgs) -> Result<i32, CliError> {
    let shell = match a.shell {
        args::Shell::Bash => clap_complete::Shell::Bash,
        args::Shell::Zsh => clap_complete::Shell::Zsh,
        args::Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "topoctl", &mut buf);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)
        .and_then(|_| out.flush())
        .map_err(CliError::Write)?;
    Ok(0)
}

async fn version(ctx: &Ctx, a: args::VersionArgs) -> Result<i32, CliError> {
    emit(&format!("topoctl version {}\n", env!("CARGO_PKG_VERSION")))?;
    if a.client {
        return Ok(0);
    }
    let client = ctx.client()?;
    client.healthz().await?;
    emit(&format!("controller at {}: healthy\n", client.server()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::container;

    #[test]
    fn kinds_and_refs() {
        for (s, k) in [
            ("no", Kind::Node),
            ("nodes", Kind::Node),
            ("node", Kind::Node),
            ("net", Kind::Network),
            ("Network", Kind::Network),
            ("c", Kind::Container),
            ("containers", Kind::Container),
            ("ln", Kind::Link),
            ("link", Kind::Link),
            ("tun", Kind::Tunnel),
            ("tunnels", Kind::Tunnel),
        ] {
            assert_eq!(parse_kind(s).unwrap(), k, "{s}");
        }
        assert!(parse_kind("pods").is_err());
        assert_eq!(
            parse_ref("container/redis").unwrap(),
            ObjectRef::new(Kind::Container, "redis")
        );
        assert!(parse_ref("container").is_err());
        assert!(parse_ref("container/").is_err());
        assert!(parse_ref("pod/x").is_err());
        let refs = parse_refs(&["c".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(
            refs,
            [
                ObjectRef::new(Kind::Container, "a"),
                ObjectRef::new(Kind::Container, "b")
            ]
        );
        let refs = parse_refs(&["c/a".into(), "ln/b".into()]).unwrap();
        assert_eq!(
            refs,
            [
                ObjectRef::new(Kind::Container, "a"),
                ObjectRef::new(Kind::Link, "b")
            ]
        );
        assert!(parse_refs(&["redis".into()]).is_err());
    }

    #[test]
    fn not_found_reads_like_kubectl() {
        let e = CliError::NotFound(ObjectRef::new(Kind::Container, "x"));
        assert_eq!(e.to_string(), "container \"x\" not found");
    }

    #[test]
    fn client_dry_run_classification() {
        let now = Utc::now();
        let live = container("redis", now);
        let mut same = live.clone();
        same.clear_status();
        assert_eq!(classify(&same, Some(&live)), ApplyAction::Unchanged);
        assert_eq!(classify(&same, None), ApplyAction::Created);
        same.metadata_mut().labels.insert("a".into(), "b".into());
        assert_eq!(classify(&same, Some(&live)), ApplyAction::Configured);
    }

    #[test]
    fn deletes_referrers_first() {
        let got = deletion_order(vec![
            ObjectRef::new(Kind::Node, "n"),
            ObjectRef::new(Kind::Container, "c"),
            ObjectRef::new(Kind::Network, "net"),
            ObjectRef::new(Kind::Link, "l"),
            ObjectRef::new(Kind::Container, "c"),
        ]);
        let kinds: Vec<Kind> = got.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Link, Kind::Container, Kind::Network, Kind::Node]
        );
    }

    #[test]
    fn timeout_message_lists_what_is_pending() {
        let e = CliError::timed_out(
            Duration::from_secs(60),
            &Goal::ready(),
            3,
            vec![(
                ObjectRef::new(Kind::Container, "redis"),
                "ImagePullFailed: denied".into(),
            )],
        );
        assert_eq!(
            e.to_string(),
            "timed out after 1m waiting for 1 of 3 objects (Ready=True):\n  container/redis: ImagePullFailed: denied"
        );
    }
}
