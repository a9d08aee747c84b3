//! `topoctl events`: the events table, oldest first; with `-w`, new events and repeats as
//! they come, across disconnects and compactions.
//!
//! The view ([`EventsView`]) remembers what it printed (by event and count), so a resumed
//! watch or a relist prints only what is new; the follow loop only decides when to resume
//! and when to list again, as `crate::watch` does for objects.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use topo_schema::ObjectRef;
use topo_schema::api::{ApiError, ErrorReason, Event, WatchEvent, WatchEventType};

use super::{CliError, Ctx, emit, parse_ref, warn};
use crate::args;
use crate::client::{Client, ClientError};
use crate::output::{column_widths, render_table};
use crate::timefmt::human_duration;

/// Consecutive failed reconnects after which `events -w` gives up.
const MAX_RECONNECTS: u32 = 8;

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

pub(crate) async fn events(ctx: &Ctx, a: args::EventsArgs) -> Result<i32, CliError> {
    let object = a.for_.as_deref().map(parse_ref).transpose()?;
    let client = ctx.client()?;
    let list = client.events(object.as_ref()).await?;
    let mut view = EventsView::new(&list.items);
    let rows = event_rows(&list.items, Utc::now());
    view.widths = column_widths(&view.header, &rows);
    if rows.is_empty() {
        if !a.watch {
            warn("No events found.");
        }
    } else {
        emit(&render_table(&view.header, &rows, true, &[]))?;
        view.header_shown = true;
    }
    if !a.watch {
        return Ok(0);
    }
    let rv = list.metadata.map(|m| m.resource_version);
    follow(&client, object.as_ref(), rv, view).await
}

/// What `events -w` has printed.
struct EventsView {
    header: Vec<String>,
    widths: Vec<usize>,
    header_shown: bool,
    /// (object, id) → count printed, so a relist prints only what is new.
    seen: BTreeMap<(ObjectRef, String), u32>,
}

impl EventsView {
    fn new(printed: &[Event]) -> Self {
        EventsView {
            header: event_header(),
            widths: vec![],
            header_shown: false,
            seen: printed
                .iter()
                .map(|e| ((e.object.clone(), e.dedup_id()), e.count))
                .collect(),
        }
    }

    /// Records `e`; false when it was printed already with this count.
    fn is_new(&mut self, e: &Event) -> bool {
        let key = (e.object.clone(), e.dedup_id());
        if self.seen.get(&key) == Some(&e.count) {
            return false;
        }
        self.seen.insert(key, e.count);
        true
    }

    /// One event from the watch, aligned with the table above (or opening one).
    fn print_one(&mut self, e: &Event) -> Result<(), CliError> {
        if !self.is_new(e) {
            return Ok(());
        }
        let row = vec![event_row(e, Utc::now())];
        let text = if self.header_shown {
            render_table(&self.header, &row, false, &self.widths)
        } else {
            self.header_shown = true;
            self.widths = column_widths(&self.header, &row);
            render_table(&self.header, &row, true, &[])
        };
        emit(&text)
    }

    /// What a fresh list holds that was not printed.
    fn print_relisted(&mut self, items: Vec<Event>) -> Result<(), CliError> {
        let fresh: Vec<Event> = items.into_iter().filter(|e| self.is_new(e)).collect();
        let rows = event_rows(&fresh, Utc::now());
        if !rows.is_empty() {
            emit(&render_table(
                &self.header,
                &rows,
                !self.header_shown,
                &self.widths,
            ))?;
            self.header_shown = true;
        }
        Ok(())
    }
}

/// How one event watch stream ended.
enum StreamEnd {
    /// Broken or closed by the server: resume from the last revision.
    Resume,
    /// The revision is gone (compacted): list again.
    Relist,
}

/// Follows the events after `rv` until a failure that cannot be resumed.
async fn follow(
    client: &Client,
    object: Option<&ObjectRef>,
    mut rv: Option<String>,
    mut view: EventsView,
) -> Result<i32, CliError> {
    let mut failures = 0u32;
    loop {
        let end = match client.watch_events(object, rv.as_deref()).await {
            Ok(mut stream) => loop {
                match stream.next_event().await {
                    Ok(Some(ev)) => {
                        failures = 0;
                        if let Some(end) = on_event(ev, &mut rv, &mut view)? {
                            break end;
                        }
                    }
                    Ok(None) | Err(_) => {
                        failures += 1;
                        break StreamEnd::Resume;
                    }
                }
            },
            Err(e) if e.reason() == Some(ErrorReason::Expired) => StreamEnd::Relist,
            Err(e) if e.is_unreachable() => {
                failures += 1;
                StreamEnd::Resume
            }
            Err(e) => return Err(e.into()),
        };
        if failures > MAX_RECONNECTS {
            return Err(CliError::Usage(format!(
                "lost the event watch at {} and could not resume it",
                client.server()
            )));
        }
        if failures > 0 {
            tokio::time::sleep(Duration::from_millis(200u64 << failures.min(6))).await;
        }
        if let StreamEnd::Relist = end {
            let list = client.events(object).await?;
            rv = list.metadata.map(|m| m.resource_version);
            view.print_relisted(list.items)?;
        }
    }
}

/// One watch event: printed, or a new revision; Some when the stream must end.
fn on_event(
    ev: WatchEvent<Event>,
    rv: &mut Option<String>,
    view: &mut EventsView,
) -> Result<Option<StreamEnd>, CliError> {
    match ev.type_ {
        WatchEventType::Error => {
            let err = ev
                .error
                .unwrap_or_else(|| ApiError::new(ErrorReason::InternalError, "watch failed"));
            if err.code == 410 || err.reason == ErrorReason::Expired {
                return Ok(Some(StreamEnd::Relist));
            }
            Err(ClientError::Api(err).into())
        }
        WatchEventType::Bookmark | WatchEventType::Deleted => {
            *rv = Some(ev.resource_version);
            Ok(None)
        }
        WatchEventType::Added | WatchEventType::Modified => {
            *rv = Some(ev.resource_version);
            if let Some(e) = ev.object {
                view.print_one(&e)?;
            }
            Ok(None)
        }
    }
}
