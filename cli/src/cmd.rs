//! The verbs: each parses its arguments, talks to the controller through [`Client`] and
//! prints through [`crate::output`]; exit statuses and errors are [`CliError`]'s.
//!
//! The verbs with several phases (`get`, `delete`, `events`, `label`/`annotate`, `edit`, `logs`, `exec`,
//! `explain`) live in modules of their own under `cmd/`; this file holds what they share and the short verbs. The dispatch is the
//! crate's [`crate::run`], above both, so the verb modules use this one and not the other
//! way round.

pub(crate) mod delete;
pub(crate) mod edit;
pub(crate) mod events;
pub(crate) mod exec;
pub(crate) mod explain;
pub(crate) mod get;
pub(crate) mod graph;
pub(crate) mod label;
pub(crate) mod logs;
pub(crate) mod verify;

pub use self::events::{event_header, event_rows};

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::Utc;
use clap::CommandFactory;
use topo_schema::api::{ApiError, ApplyAction, ApplyRequest, LabelSelector};
use topo_schema::{Kind, ObjectRef, Resource};

use crate::args::{self, Cli, DryRun};
use crate::client::{Client, ClientError, format_api_error};
use crate::config::{ConfigError, Env, resolve};
use crate::describe::{EventsSection, describe};
use crate::inputs::{self, InputError};
use crate::output::{self, Format, OutputError};
use crate::timefmt::format_duration;
use crate::waiter::{self, Goal, Outcome, Progress};

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
    #[error(transparent)]
    Printer(#[from] crate::printer::PrinterError),
    #[error(transparent)]
    Edit(#[from] crate::editor::EditError),
    #[error(transparent)]
    Explain(#[from] crate::explain::ExplainError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    /// Manifests that do not parse or validate here; nothing was sent.
    #[error("{}", format_api_error(.0))]
    Invalid(ApiError),
    #[error("{} {:?} not found", .0.kind.as_str().to_ascii_lowercase(), .0.name)]
    NotFound(ObjectRef),
    /// A failure about one object, on one line: `container/db: why`.
    #[error("{object}: {message}")]
    Object { object: ObjectRef, message: String },
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

    /// The controller's refusal of a change to `r`, on one line naming it (kubectl's
    /// habit); failures to reach the controller stay as they are.
    pub(crate) fn object(r: &ObjectRef, e: ClientError) -> CliError {
        let Some(api) = e.api() else {
            return CliError::Client(e);
        };
        let prefix = format!("{r}: ");
        let strip = |s: &str| s.strip_prefix(&prefix).unwrap_or(s).to_string();
        let mut parts = vec![strip(&api.message)];
        for c in &api.causes {
            let c = strip(&c.to_string());
            if !parts.contains(&c) {
                parts.push(c);
            }
        }
        CliError::Object {
            object: r.clone(),
            message: parts.join("; "),
        }
    }

    /// Output to a closed pipe (`topoctl get c | head`) is no failure worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Write(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Writes to stdout without panicking on a closed pipe.
pub(crate) fn emit(s: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|_| out.flush())
        .map_err(CliError::Write)
}

/// Writes bytes (a raw body, maybe cut mid-character) to stdout.
pub(crate) fn emit_bytes(b: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(b)
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
    pub(crate) fn client(&self) -> Result<Client, CliError> {
        let conn = resolve(self.server_flag.as_deref(), &self.env)?;
        Ok(Client::new(&conn, Some(self.request_timeout))?)
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

pub(crate) async fn apply(ctx: &Ctx, a: args::ApplyArgs) -> Result<i32, CliError> {
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

pub(crate) async fn describe_cmd(ctx: &Ctx, a: args::DescribeArgs) -> Result<i32, CliError> {
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

pub(crate) async fn diff(ctx: &Ctx, a: args::DiffArgs) -> Result<i32, CliError> {
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

pub(crate) async fn wait(ctx: &Ctx, a: args::WaitArgs) -> Result<i32, CliError> {
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

pub(crate) fn schema(a: args::SchemaArgs) -> Result<i32, CliError> {
    let kind = a.kind.as_deref().map(parse_kind).transpose()?;
    let v = topo_schema::jsonschema::schema_for(kind);
    emit(&output::document(&v, Format::Json)?)?;
    Ok(0)
}

pub(crate) fn completion(a: args::CompletionArgs) -> Result<i32, CliError> {
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

pub(crate) async fn version(ctx: &Ctx, a: args::VersionArgs) -> Result<i32, CliError> {
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
