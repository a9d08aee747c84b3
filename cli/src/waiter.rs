//! Waiting until objects reach a goal (a condition, or being gone), with progress shown.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use topo_schema::{ConditionStatus, Kind, ObjectRef, Resource, find_condition};

use crate::client::{Client, ClientError};
use crate::watch::{self, Change};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// The condition `type_` has `status`.
    Condition {
        type_: String,
        status: ConditionStatus,
    },
    /// The object no longer exists.
    Deleted,
}

impl Goal {
    pub fn ready() -> Goal {
        Goal::Condition {
            type_: topo_schema::CONDITION_READY.into(),
            status: ConditionStatus::True,
        }
    }

    /// `condition=Ready`, `condition=Ready=False`, `delete`.
    pub fn parse(s: &str) -> Result<Goal, String> {
        if s == "delete" {
            return Ok(Goal::Deleted);
        }
        let Some(cond) = s.strip_prefix("condition=") else {
            return Err(format!(
                "invalid --for {s:?}: expected condition=TYPE[=STATUS] or delete"
            ));
        };
        let (type_, status) = match cond.split_once('=') {
            Some((t, st)) => {
                let status = match st.to_ascii_lowercase().as_str() {
                    "true" => ConditionStatus::True,
                    "false" => ConditionStatus::False,
                    "unknown" => ConditionStatus::Unknown,
                    _ => {
                        return Err(format!(
                            "invalid condition status {st:?}: expected True, False or Unknown"
                        ));
                    }
                };
                (t, status)
            }
            None => (cond, ConditionStatus::True),
        };
        if type_.is_empty() {
            return Err(format!("invalid --for {s:?}: the condition type is empty"));
        }
        Ok(Goal::Condition {
            type_: type_.to_string(),
            status,
        })
    }

    pub fn met_message(&self) -> &'static str {
        match self {
            Goal::Condition { .. } => "condition met",
            Goal::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Met,
    /// Not yet, and why (`ImagePullFailed: pull access denied`).
    Pending(String),
}

/// Whether `object` (None: it does not exist) meets `goal`.
pub fn evaluate(goal: &Goal, object: Option<&Resource>) -> Verdict {
    match (goal, object) {
        (Goal::Deleted, None) => Verdict::Met,
        (Goal::Deleted, Some(_)) => Verdict::Pending("still exists".into()),
        (Goal::Condition { .. }, None) => Verdict::Pending("not found".into()),
        (Goal::Condition { type_, status }, Some(o)) => {
            let Some(c) = find_condition(o.conditions(), type_) else {
                return Verdict::Pending(format!("no {type_} condition yet"));
            };
            if c.status != *status {
                let mut why = if c.reason.is_empty() {
                    format!("{type_}={}", c.status)
                } else {
                    c.reason.clone()
                };
                if !c.message.is_empty() {
                    why.push_str(": ");
                    why.push_str(&c.message);
                }
                return Verdict::Pending(why);
            }
            // A condition about an older spec says nothing about the one just applied.
            let generation = o.metadata().generation;
            let observed = observed_generation(o);
            match (generation, observed) {
                (Some(g), Some(og)) if og < g => Verdict::Pending(format!(
                    "waiting for generation {g} to be observed (at {og})"
                )),
                _ => Verdict::Met,
            }
        }
    }
}

fn observed_generation(o: &Resource) -> Option<i64> {
    o.status_value()
        .get("observedGeneration")
        .and_then(|v| v.as_i64())
}

/// Shows how a wait goes.
pub trait Progress {
    fn update(&mut self, verdicts: &[(ObjectRef, Verdict)]);
    fn finish(&mut self, verdicts: &[(ObjectRef, Verdict)], all_met: bool);
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn update(&mut self, _: &[(ObjectRef, Verdict)]) {}
    fn finish(&mut self, _: &[(ObjectRef, Verdict)], _: bool) {}
}

/// Prints `container/redis condition met` as each object meets the goal (`topoctl wait`).
pub struct MetLines<W: Write> {
    pub out: W,
    pub message: &'static str,
    printed: BTreeSet<ObjectRef>,
}

impl<W: Write> MetLines<W> {
    pub fn new(out: W, message: &'static str) -> Self {
        MetLines {
            out,
            message,
            printed: BTreeSet::new(),
        }
    }
}

impl<W: Write> Progress for MetLines<W> {
    fn update(&mut self, verdicts: &[(ObjectRef, Verdict)]) {
        for (o, v) in verdicts {
            if *v == Verdict::Met && self.printed.insert(o.clone()) {
                let _ = writeln!(self.out, "{o} {}", self.message);
            }
        }
    }
    fn finish(&mut self, verdicts: &[(ObjectRef, Verdict)], _: bool) {
        self.update(verdicts);
    }
}

/// Plain progress lines, for logs and pipes: each object's changes, with the running count.
pub struct PlainLines<W: Write> {
    out: W,
    last: BTreeMap<ObjectRef, Verdict>,
}

impl<W: Write> PlainLines<W> {
    pub fn new(out: W) -> Self {
        PlainLines {
            out,
            last: BTreeMap::new(),
        }
    }
}

fn count_met(verdicts: &[(ObjectRef, Verdict)]) -> usize {
    verdicts.iter().filter(|(_, v)| *v == Verdict::Met).count()
}

impl<W: Write> Progress for PlainLines<W> {
    fn update(&mut self, verdicts: &[(ObjectRef, Verdict)]) {
        let (met, total) = (count_met(verdicts), verdicts.len());
        if self.last.is_empty() {
            let _ = writeln!(
                self.out,
                "waiting for {total} objects to be Ready ({met}/{total} Ready)"
            );
        }
        for (o, v) in verdicts {
            if self.last.get(o) == Some(v) {
                continue;
            }
            let _ = match v {
                Verdict::Met => writeln!(self.out, "{o} Ready ({met}/{total})"),
                Verdict::Pending(why) => writeln!(self.out, "{o} not Ready: {why}"),
            };
            self.last.insert(o.clone(), v.clone());
        }
        let _ = self.out.flush();
    }

    fn finish(&mut self, verdicts: &[(ObjectRef, Verdict)], all_met: bool) {
        self.update(verdicts);
        if all_met {
            let _ = writeln!(self.out, "{n}/{n} Ready", n = verdicts.len());
        }
    }
}

/// A live bar `3/10 Ready` with the objects not Ready yet beneath it (on a terminal).
pub struct Bar {
    bar: ProgressBar,
}

/// How many not-Ready objects the live display lists.
const BAR_LIST: usize = 10;

impl Bar {
    pub fn new(total: usize) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} Ready ({elapsed})\n{msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar { bar }
    }
}

/// The lines under the bar: the objects not Ready yet and why, at most `limit`.
pub fn pending_lines(verdicts: &[(ObjectRef, Verdict)], limit: usize) -> String {
    let pending: Vec<String> = verdicts
        .iter()
        .filter_map(|(o, v)| match v {
            Verdict::Pending(why) => Some(format!("  {o}: {why}")),
            Verdict::Met => None,
        })
        .collect();
    let mut lines: Vec<String> = pending.iter().take(limit).cloned().collect();
    if pending.len() > limit {
        lines.push(format!("  ... and {} more", pending.len() - limit));
    }
    lines.join("\n")
}

impl Progress for Bar {
    fn update(&mut self, verdicts: &[(ObjectRef, Verdict)]) {
        self.bar.set_position(count_met(verdicts) as u64);
        self.bar.set_message(pending_lines(verdicts, BAR_LIST));
    }

    fn finish(&mut self, verdicts: &[(ObjectRef, Verdict)], all_met: bool) {
        self.update(verdicts);
        if all_met {
            self.bar.finish_with_message("");
        } else {
            // The error that follows lists what is not Ready; keep only the bar.
            self.bar.abandon_with_message("");
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Met,
    TimedOut(Vec<(ObjectRef, String)>),
}

/// Waits until every target meets `goal`, or `timeout` passes.
pub async fn wait_for(
    client: &Client,
    targets: &[ObjectRef],
    goal: &Goal,
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<Outcome, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let kinds: BTreeSet<Kind> = targets.iter().map(|t| t.kind).collect();
    let wanted: BTreeSet<&ObjectRef> = targets.iter().collect();
    let mut state: BTreeMap<ObjectRef, Resource> = BTreeMap::new();

    let (tx, mut rx) = mpsc::channel(256);
    for kind in &kinds {
        let list = client.list(*kind, None).await?;
        for o in &list.items {
            if wanted.contains(&o.object_ref()) {
                state.insert(o.object_ref(), o.clone());
            }
        }
        watch::spawn(client.clone(), *kind, None, &list, tx.clone());
    }
    drop(tx);
    // When a watch gives up, fall back to listing now and then.
    let mut polling = false;

    loop {
        let verdicts: Vec<(ObjectRef, Verdict)> = targets
            .iter()
            .map(|t| (t.clone(), evaluate(goal, state.get(t))))
            .collect();
        let all_met = verdicts.iter().all(|(_, v)| *v == Verdict::Met);
        if all_met {
            progress.finish(&verdicts, true);
            return Ok(Outcome::Met);
        }
        progress.update(&verdicts);
        let timed_out = || {
            verdicts
                .iter()
                .filter_map(|(o, v)| match v {
                    Verdict::Pending(why) => Some((o.clone(), why.clone())),
                    Verdict::Met => None,
                })
                .collect::<Vec<_>>()
        };
        if polling {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    progress.finish(&verdicts, false);
                    return Ok(Outcome::TimedOut(timed_out()));
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            for kind in &kinds {
                match client.list(*kind, None).await {
                    Ok(list) => {
                        state.retain(|r, _| r.kind != *kind);
                        for o in list.items {
                            if wanted.contains(&o.object_ref()) {
                                state.insert(o.object_ref(), o);
                            }
                        }
                    }
                    Err(e) if e.is_unreachable() => {}
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                progress.finish(&verdicts, false);
                return Ok(Outcome::TimedOut(timed_out()));
            }
            msg = rx.recv() => match msg {
                Some(Ok(u)) => {
                    let r = u.object.object_ref();
                    if wanted.contains(&r) {
                        match u.change {
                            Change::Deleted => { state.remove(&r); }
                            _ => { state.insert(r, u.object); }
                        }
                    }
                }
                Some(Err(_)) | None => polling = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::{container, ready};

    #[test]
    fn goals_parse() {
        assert_eq!(Goal::parse("condition=Ready").unwrap(), Goal::ready());
        assert_eq!(
            Goal::parse("condition=Ready=false").unwrap(),
            Goal::Condition {
                type_: "Ready".into(),
                status: ConditionStatus::False
            }
        );
        assert_eq!(Goal::parse("delete").unwrap(), Goal::Deleted);
        assert!(Goal::parse("Ready").is_err());
        assert!(Goal::parse("condition=").is_err());
        assert!(Goal::parse("condition=Ready=maybe").is_err());
    }

    #[test]
    fn verdicts() {
        let now = chrono::Utc::now();
        let mut c = container("redis", now);
        assert_eq!(evaluate(&Goal::ready(), Some(&c)), Verdict::Met);
        assert_eq!(
            evaluate(&Goal::ready(), None),
            Verdict::Pending("not found".into())
        );
        assert_eq!(evaluate(&Goal::Deleted, None), Verdict::Met);
        assert!(matches!(
            evaluate(&Goal::Deleted, Some(&c)),
            Verdict::Pending(_)
        ));

        // Ready, but for an older generation of the spec.
        c.metadata_mut().generation = Some(3);
        if let Resource::Container(o) = &mut c {
            o.status.as_mut().unwrap().observed_generation = Some(2);
        }
        assert!(
            matches!(evaluate(&Goal::ready(), Some(&c)), Verdict::Pending(w) if w.contains("generation 3"))
        );

        if let Resource::Container(o) = &mut c {
            let st = o.status.as_mut().unwrap();
            st.observed_generation = Some(3);
            st.conditions = ready(ConditionStatus::False, "ImagePullFailed", now);
            st.conditions[0].message = "pull access denied".into();
        }
        assert_eq!(
            evaluate(&Goal::ready(), Some(&c)),
            Verdict::Pending("ImagePullFailed: pull access denied".into())
        );
    }

    #[test]
    fn plain_progress_lines() {
        let a = ObjectRef::new(Kind::Container, "a");
        let b = ObjectRef::new(Kind::Container, "b");
        let mut out = Vec::new();
        {
            let mut p = PlainLines::new(&mut out);
            p.update(&[
                (a.clone(), Verdict::Pending("Creating".into())),
                (b.clone(), Verdict::Met),
            ]);
            p.update(&[
                (a.clone(), Verdict::Pending("Creating".into())),
                (b.clone(), Verdict::Met),
            ]);
            p.finish(
                &[(a.clone(), Verdict::Met), (b.clone(), Verdict::Met)],
                true,
            );
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "waiting for 2 objects to be Ready (1/2 Ready)\ncontainer/a not Ready: Creating\ncontainer/b Ready (1/2)\ncontainer/a Ready (2/2)\n2/2 Ready\n"
        );
        let lines = pending_lines(
            &[
                (a, Verdict::Pending("x".into())),
                (b, Verdict::Pending("y".into())),
            ],
            1,
        );
        assert_eq!(lines, "  container/a: x\n  ... and 1 more");
    }
}
