//! `topoctl verify [-l SELECTOR] [-o lines|json]`: asks the controller to have the agents
//! test the live dataplane (the controller's `verify.rs` says who checks what) and prints one
//! line per check, failures last so they end the output. Exit status 0 when every check
//! passed, 1 when one failed (an error reaching the controller is an error, as elsewhere).

use topo_schema::verify::{Check, VerifyReport};

use super::{CliError, Ctx, emit};
use crate::args::{VerifyArgs, VerifyFormat};

/// The report as lines: passes first, then failures, each group in the controller's order,
/// and a summary.
pub fn lines(r: &VerifyReport) -> String {
    let mut out = String::new();
    let (passed, failed): (Vec<&Check>, Vec<&Check>) = r.checks.iter().partition(|c| c.passed);
    for c in passed.iter().chain(failed.iter()) {
        out.push_str(&c.line());
        out.push('\n');
    }
    out.push_str(&match (r.checks.len(), failed.len()) {
        (0, _) => {
            "no checks: no container matched, or none has a network, link or published port\n"
                .to_string()
        }
        (n, 0) => format!("all {n} checks passed\n"),
        (n, f) => format!("{f} of {n} checks failed\n"),
    });
    out
}

pub async fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<i32, CliError> {
    let client = ctx.client()?;
    let report = client.verify(a.selector.as_deref()).await?;
    match a.output {
        VerifyFormat::Lines => emit(&lines(&report))?,
        VerifyFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report.checks)
                .map_err(|e| CliError::Usage(format!("failed to encode the checks: {e}")))?;
            s.push('\n');
            emit(&s)?;
        }
    }
    Ok(if report.all_passed() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use topo_schema::verify::CheckKind;

    #[test]
    fn failures_come_last_with_a_summary() {
        let pass = Check::pass(
            CheckKind::Gateway,
            "web1",
            "node1",
            "web1 → gateway 10.2.1.1 of network ov on node1".into(),
        );
        let fail = Check::fail(
            CheckKind::Mtu,
            "web1",
            "node1",
            "web1 → db (10.2.3.2) on network ov: 1400 bytes, don't fragment, node1 → node3".into(),
            "eth0 of web1 refuses a 1400-byte packet: its MTU is below the network's".into(),
        );
        let r = VerifyReport {
            checks: vec![fail.clone(), pass.clone()],
        };
        assert_eq!(
            lines(&r),
            "PASS gateway web1 → gateway 10.2.1.1 of network ov on node1\n\
             FAIL mtu     web1 → db (10.2.3.2) on network ov: 1400 bytes, don't fragment, node1 → node3: eth0 of web1 refuses a 1400-byte packet: its MTU is below the network's\n\
             1 of 2 checks failed\n"
        );
        let r = VerifyReport { checks: vec![pass] };
        assert!(lines(&r).ends_with("all 1 checks passed\n"));
        assert!(lines(&VerifyReport::default()).starts_with("no checks"));
    }
}
