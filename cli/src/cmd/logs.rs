//! `topoctl logs NAME [-f] [--tail N] [--since DURATION|TIME]`: a container's log, as the
//! controller streams it from the agent of the container's node (see the controller's
//! `logs.rs` for who may read it). The bytes are printed as they come; a follow ends when
//! the container's log ends or the user interrupts it.

use topo_schema::Kind;

use super::{CliError, Ctx, emit_bytes, parse_ref};
use crate::args::{LogsArgs, Since};

/// The query of kube's pod-log options for `a`.
pub fn log_query(a: &LogsArgs) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if a.follow {
        q.push(("follow", "true".to_string()));
    }
    if let Some(n) = a.tail {
        q.push(("tailLines", n.to_string()));
    }
    match &a.since {
        Some(Since::Duration(d)) => q.push(("sinceSeconds", d.as_secs().max(1).to_string())),
        Some(Since::Time(t)) => q.push((
            "sinceTime",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )),
        None => {}
    }
    q
}

/// NAME or container/NAME.
fn container_name(arg: &str) -> Result<String, CliError> {
    if !arg.contains('/') {
        return Ok(arg.to_string());
    }
    let r = parse_ref(arg)?;
    if r.kind != Kind::Container {
        return Err(CliError::Usage(format!(
            "only containers have logs; {arg:?} names a {}",
            r.kind.as_str()
        )));
    }
    Ok(r.name)
}

pub async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<i32, CliError> {
    let name = container_name(&a.name)?;
    let query = log_query(&a);
    let pairs: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let client = ctx.client()?;
    let mut body = client.logs(&name, &pairs).await?;
    while let Some(chunk) = body.next_chunk().await? {
        emit_bytes(&chunk)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn options_become_kube_log_options() {
        let a = LogsArgs {
            name: "db".into(),
            follow: true,
            tail: Some(3),
            since: Some(Since::Duration(Duration::from_secs(300))),
        };
        assert_eq!(
            log_query(&a),
            vec![
                ("follow", "true".to_string()),
                ("tailLines", "3".to_string()),
                ("sinceSeconds", "300".to_string())
            ]
        );
        let t = crate::args::since_arg("2026-11-28T19:00:00Z").unwrap();
        let a = LogsArgs {
            name: "db".into(),
            follow: false,
            tail: None,
            since: Some(t),
        };
        assert_eq!(
            log_query(&a),
            vec![("sinceTime", "2026-11-28T19:00:00Z".to_string())]
        );
        assert!(crate::args::since_arg("soon").is_err());
        assert_eq!(container_name("container/db").unwrap(), "db");
        assert!(container_name("network/db").is_err());
    }
}
