//! `topoctl label` and `topoctl annotate`: set (`k=v`) and remove (`k-`) labels or
//! annotations of objects, as kubectl does.
//!
//! One module for both because they differ only in the map they change and in their words
//! ([`Which`]). Each object is read, changed and written back with its resourceVersion, so a
//! concurrent write is never lost: on a conflict the change is made again on a fresh read.
//! A key that already has another value is changed only with `--overwrite` (kubectl's
//! rule); removing a key that is not there only warns.

use std::collections::BTreeMap;

use topo_schema::validate::{check_label_value, check_qualified_name};
use topo_schema::{Kind, ObjectRef, Resource};

use super::{CliError, Ctx, check_selector, emit, parse_kind, parse_ref, warn};
use crate::args::{self, DryRun};
use crate::client::{Client, ClientError};

/// How many times a change is made again on a fresh read after a conflict.
const CONFLICT_RETRIES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Labels,
    Annotations,
}

impl Which {
    fn done(self) -> &'static str {
        match self {
            Which::Labels => "labeled",
            Which::Annotations => "annotated",
        }
    }

    fn map(self, r: &mut Resource) -> &mut BTreeMap<String, String> {
        let m = r.metadata_mut();
        match self {
            Which::Labels => &mut m.labels,
            Which::Annotations => &mut m.annotations,
        }
    }
}

/// One change of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Set(String, String),
    Remove(String),
}

/// The objects and the changes of the arguments: objects first (`KIND NAME...` or
/// `KIND/NAME...`, or just `KIND` with `-l`/`--all`), then `k=v` and `k-`.
pub(crate) fn split_args(
    which: Which,
    args: &[String],
) -> Result<(Vec<String>, Vec<Change>), CliError> {
    let is_change = |a: &str| a.contains('=') || (a.ends_with('-') && a.len() > 1);
    let at = args.iter().position(|a| is_change(a)).unwrap_or(args.len());
    let (objects, changes) = args.split_at(at);
    let mut out = Vec::new();
    for c in changes {
        if !is_change(c) {
            return Err(CliError::Usage(format!(
                "{c:?} is not KEY=VALUE or KEY- (objects come before the changes)"
            )));
        }
        out.push(parse_change(which, c)?);
    }
    if out.is_empty() {
        return Err(CliError::Usage(
            "at least one change is required: KEY=VALUE to set, KEY- to remove".into(),
        ));
    }
    Ok((objects.to_vec(), out))
}

fn parse_change(which: Which, c: &str) -> Result<Change, CliError> {
    let what = match which {
        Which::Labels => "label",
        Which::Annotations => "annotation",
    };
    let (key, change) = match c.split_once('=') {
        Some((k, v)) => (k, Change::Set(k.to_string(), v.to_string())),
        None => {
            let k = c.trim_end_matches('-');
            (k, Change::Remove(k.to_string()))
        }
    };
    check_qualified_name(key)
        .map_err(|why| CliError::Usage(format!("invalid {what} key {key:?}: it {why}")))?;
    if let (Which::Labels, Change::Set(_, v)) = (which, &change) {
        check_label_value(v)
            .map_err(|why| CliError::Usage(format!("invalid label value {v:?}: it {why}")))?;
    }
    Ok(change)
}

/// What a change does to one object's map: the new map, or why it may not be made.
pub(crate) fn apply_changes(
    which: Which,
    map: &BTreeMap<String, String>,
    changes: &[Change],
    overwrite: bool,
    object: &ObjectRef,
) -> Result<(BTreeMap<String, String>, Vec<String>), CliError> {
    let mut new = map.clone();
    let mut warnings = Vec::new();
    for c in changes {
        match c {
            Change::Set(k, v) => match map.get(k) {
                Some(old) if old != v && !overwrite => {
                    let msg = match which {
                        Which::Labels => {
                            format!("'{k}' already has a value ({old}), and --overwrite is false")
                        }
                        Which::Annotations => format!(
                            "--overwrite is false but found the following declared annotation(s): '{k}' already has a value ({old})"
                        ),
                    };
                    return Err(CliError::Object {
                        object: object.clone(),
                        message: msg,
                    });
                }
                _ => {
                    new.insert(k.clone(), v.clone());
                }
            },
            Change::Remove(k) => {
                if new.remove(k).is_none() && which == Which::Labels {
                    warnings.push(format!("label {k:?} not found."));
                }
            }
        }
    }
    Ok((new, warnings))
}

pub(crate) async fn label(ctx: &Ctx, which: Which, a: args::MetaArgs) -> Result<i32, CliError> {
    let (objects, changes) = split_args(which, &a.args)?;
    let client = ctx.client()?;
    let targets = targets(&client, &objects, &a).await?;
    let mut failures = 0usize;
    for t in &targets {
        match change_one(&client, which, t, &changes, &a).await {
            Ok(line) => emit(&line)?,
            Err(CliError::Client(e)) if e.is_unreachable() => return Err(e.into()),
            Err(e) => {
                warn(&format!("error: {e}"));
                failures += 1;
            }
        }
    }
    if failures > 0 {
        return Err(CliError::Reported(format!(
            "changing {failures} of {} objects",
            targets.len()
        )));
    }
    Ok(0)
}

/// The objects named (`KIND NAME...`, `KIND/NAME...`) or selected (`KIND -l SEL`, `KIND
/// --all`).
async fn targets(
    client: &Client,
    objects: &[String],
    a: &args::MetaArgs,
) -> Result<Vec<ObjectRef>, CliError> {
    let selecting = a.selector.is_some() || a.all;
    match objects {
        [] => Err(CliError::Usage(
            "name the objects: KIND NAME... or KIND/NAME... (or KIND with -l or --all)".into(),
        )),
        [kind] if selecting && !kind.contains('/') => {
            check_selector(a.selector.as_deref())?;
            let kind: Kind = parse_kind(kind)?;
            let mut items = client.list(kind, a.selector.as_deref()).await?.items;
            items.sort_by(|x, y| x.name().cmp(y.name()));
            if items.is_empty() {
                warn("No resources found.");
            }
            Ok(items.iter().map(Resource::object_ref).collect())
        }
        _ if selecting => Err(CliError::Usage(
            "names cannot be given together with -l or --all".into(),
        )),
        [only] if !only.contains('/') => Err(CliError::Usage(format!(
            "name the {} to change (KIND NAME...), or select them with -l or --all",
            parse_kind(only)?.plural()
        ))),
        [first, rest @ ..] if !first.contains('/') => {
            let kind = parse_kind(first)?;
            Ok(rest
                .iter()
                .map(|n| ObjectRef::new(kind, n.as_str()))
                .collect())
        }
        all => all.iter().map(|s| parse_ref(s)).collect(),
    }
}

/// Reads, changes and writes one object, again on a fresh read after a conflict; the line
/// to print.
async fn change_one(
    client: &Client,
    which: Which,
    target: &ObjectRef,
    changes: &[Change],
    a: &args::MetaArgs,
) -> Result<String, CliError> {
    let suffix = match a.dry_run {
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
        DryRun::None => "",
    };
    for _ in 0..CONFLICT_RETRIES {
        let mut object = match client.get(target.kind, &target.name).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Err(CliError::NotFound(target.clone())),
            Err(e) => return Err(CliError::object(target, e)),
        };
        let (new, warnings) =
            apply_changes(which, which.map(&mut object), changes, a.overwrite, target)?;
        for w in warnings {
            warn(&w);
        }
        if *which.map(&mut object) == new {
            return Ok(format!("{target} not {}\n", which.done()));
        }
        *which.map(&mut object) = new;
        if a.dry_run == DryRun::Client {
            return Ok(format!("{target} {}{suffix}\n", which.done()));
        }
        match client.replace(&object, a.dry_run == DryRun::Server).await {
            Ok(_) => return Ok(format!("{target} {}{suffix}\n", which.done())),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(CliError::object(target, e)),
        }
    }
    Err(CliError::Object {
        object: target.clone(),
        message: format!(
            "the object kept changing while it was being {}: gave up after {CONFLICT_RETRIES} conflicts",
            which.done()
        ),
    })
}

fn is_conflict(e: &ClientError) -> bool {
    e.reason() == Some(topo_schema::api::ErrorReason::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments_split_into_objects_and_changes() {
        let (o, c) = split_args(Which::Labels, &strings(&["c", "db", "app=db", "tier-"])).unwrap();
        assert_eq!(o, ["c", "db"]);
        assert_eq!(
            c,
            [
                Change::Set("app".into(), "db".into()),
                Change::Remove("tier".into())
            ]
        );
        let (_, c) = split_args(
            Which::Annotations,
            &strings(&["c/db", "note=a b = c", "topo.dev/x-"]),
        )
        .unwrap();
        assert_eq!(
            c,
            [
                Change::Set("note".into(), "a b = c".into()),
                Change::Remove("topo.dev/x".into())
            ]
        );
        for (args, why) in [
            (&["c", "db"][..], "at least one change"),
            (
                &["c/db", "a=b", "web"][..],
                "\"web\" is not KEY=VALUE or KEY-",
            ),
            (&["c/db", "a b=c"][..], "invalid label key \"a b\""),
            (&["c/db", "a=b c"][..], "invalid label value \"b c\""),
            (&["c/db", "-=x"][..], "invalid label key \"-\""),
        ] {
            let e = split_args(Which::Labels, &strings(args))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{args:?}: {e}");
        }
        assert!(split_args(Which::Annotations, &strings(&["c/db", "a=b c"])).is_ok());
    }

    #[test]
    fn overwrite_is_needed_to_change_a_value() {
        let r = ObjectRef::new(Kind::Container, "db");
        let map: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        let set = |v: &str| vec![Change::Set("app".into(), v.into())];
        let e = apply_changes(Which::Labels, &map, &set("web"), false, &r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container/db: 'app' already has a value (db), and --overwrite is false"
        );
        let e = apply_changes(Which::Annotations, &map, &set("web"), false, &r).unwrap_err();
        assert!(e.to_string().contains("--overwrite is false but found the following declared annotation(s): 'app' already has a value (db)"));
        let (new, _) = apply_changes(Which::Labels, &map, &set("web"), true, &r).unwrap();
        assert_eq!(new["app"], "web");
        let (new, _) = apply_changes(Which::Labels, &map, &set("db"), false, &r).unwrap();
        assert_eq!(new, map, "the same value needs no --overwrite");
        let (new, warnings) = apply_changes(
            Which::Labels,
            &map,
            &[Change::Remove("x".into())],
            false,
            &r,
        )
        .unwrap();
        assert_eq!(
            (new, warnings),
            (map, vec!["label \"x\" not found.".to_string()])
        );
    }
}
