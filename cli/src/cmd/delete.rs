//! `topoctl delete`: objects named on the command line, selected with `-l`, or read from
//! manifests, deleted referrers first; with `--wait`, until they are gone from the API and
//! from every node.
//!
//! Shaped as the verb runs: the targets are resolved from the arguments, each is deleted
//! (a failure is reported and the rest still go), then the wait, then the exit status.

use std::collections::BTreeSet;
use std::time::Duration;

use topo_schema::api::ApiError;
use topo_schema::{Kind, ObjectRef, Resource};

use super::{
    CliError, Ctx, check_selector, emit, get_opt, parse_kind, parse_ref, read_manifests, warn,
};
use crate::args::{self, DryRun};
use crate::client::{Client, ClientError};
use crate::waiter::{self, Goal, Outcome};

pub(crate) async fn delete(ctx: &Ctx, a: args::DeleteArgs) -> Result<i32, CliError> {
    let targets = targets_of(&a)?;
    let client = ctx.client()?;
    let targets = match (&a.selector, targets.is_empty(), a.kind.as_deref()) {
        (Some(sel), true, Some(kind)) => selected(&client, parse_kind(kind)?, sel).await?,
        _ => targets,
    };
    let (deleted, failures) = delete_each(&client, &a, &targets).await?;
    if a.wait && a.dry_run == DryRun::None && !deleted.is_empty() {
        wait_until_gone(&client, &deleted, a.timeout).await?;
    }
    if failures > 0 {
        return Err(CliError::Reported(format!(
            "deleting {failures} of {} objects",
            targets.len()
        )));
    }
    Ok(0)
}

/// The objects the arguments name: from manifests, `KIND/NAME...`, or `KIND NAME...`;
/// empty when a selector is to pick them.
fn targets_of(a: &args::DeleteArgs) -> Result<Vec<ObjectRef>, CliError> {
    let by_file = !a.files.filename.is_empty();
    if by_file && (a.kind.is_some() || a.selector.is_some()) {
        return Err(CliError::Usage(
            "give either -f FILE or KIND NAME..., not both".into(),
        ));
    }
    if by_file {
        let (_, objects) = read_manifests(&a.files)?;
        return Ok(deletion_order(
            objects.iter().map(Resource::object_ref).collect(),
        ));
    }
    let Some(kind) = a.kind.as_deref() else {
        return Err(CliError::Usage(
            "nothing to delete: give -f FILE, or KIND NAME...".into(),
        ));
    };
    // `delete container/redis link/x` works too.
    if kind.contains('/') {
        let mut all = vec![kind.to_string()];
        all.extend(a.names.iter().cloned());
        return all.iter().map(|s| parse_ref(s)).collect();
    }
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
    Ok(a.names
        .iter()
        .map(|n| ObjectRef::new(kind, n.as_str()))
        .collect())
}

/// The objects of `kind` that `selector` picks, by name.
async fn selected(client: &Client, kind: Kind, selector: &str) -> Result<Vec<ObjectRef>, CliError> {
    let mut items = client.list(kind, Some(selector)).await?.items;
    items.sort_by(|x, y| x.name().cmp(y.name()));
    if items.is_empty() {
        warn("No resources found.");
    }
    Ok(items.iter().map(Resource::object_ref).collect())
}

/// Deletes each target, reporting each failure; returns those deleted and the number that
/// failed. An unreachable server stops it.
async fn delete_each(
    client: &Client,
    a: &args::DeleteArgs,
    targets: &[ObjectRef],
) -> Result<(Vec<ObjectRef>, usize), CliError> {
    let suffix = match a.dry_run {
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
        DryRun::None => "",
    };
    let mut deleted = Vec::new();
    let mut failures = 0usize;
    for t in targets {
        let result = match a.dry_run {
            DryRun::Client => match get_opt(client, t).await {
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
    Ok((deleted, failures))
}

/// `--wait`: until the objects left the API, then every node.
async fn wait_until_gone(
    client: &Client,
    deleted: &[ObjectRef],
    timeout: Duration,
) -> Result<(), CliError> {
    let goal = Goal::Deleted;
    let started = std::time::Instant::now();
    let outcome =
        match waiter::wait_for(client, deleted, &goal, timeout, &mut waiter::Quiet).await? {
            Outcome::Met => {
                let left = timeout.saturating_sub(started.elapsed());
                wait_until_removed_from_nodes(client, deleted, left).await?
            }
            timed_out => timed_out,
        };
    match outcome {
        Outcome::Met => Ok(()),
        Outcome::TimedOut(pending) => {
            Err(CliError::timed_out(timeout, &goal, deleted.len(), pending))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
