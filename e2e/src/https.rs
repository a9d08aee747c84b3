//! HTTPS requests to the lab's controller and agent endpoints with the identities of the
//! lab's PKI (curl, run in the lab's namespaces), for tests of who may call what.

use crate::lab::{Lab, node_address};
use crate::poll::secs;

/// `https://CONTROLLER:8443PATH` of the lab.
pub fn controller_url(path: &str) -> String {
    format!("https://192.168.100.254:8443{path}")
}

/// `https://NODE_ADDRESS:10250PATH`: node `node`'s agent endpoint.
pub fn agent_url(node: u32, path: &str) -> String {
    format!("https://{}:10250{path}", node_address(node))
}

/// GET `url` as `who` (a file base name in the lab's PKI directory such as `metrics`,
/// `viewer` or `nodes/node2`; None: no client certificate): the status code and the body.
#[track_caller]
pub fn get_as(lab: &Lab, who: Option<&str>, url: &str) -> (u16, String) {
    try_get_as(lab, who, url).unwrap_or_else(|e| panic!("{e}"))
}

/// [`get_as`] for a caller that polls an endpoint which may not be up yet: curl's failure
/// (connection refused, timeout) is an error, not a panic.
pub fn try_get_as(lab: &Lab, who: Option<&str>, url: &str) -> Result<(u16, String), String> {
    let pki = lab.pki_dir();
    let mut c = lab.command("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(pki.join("ca.crt"));
    if let Some(who) = who {
        c.arg("--cert")
            .arg(pki.join(format!("{who}.crt")))
            .arg("--key")
            .arg(pki.join(format!("{who}.key")));
    }
    c.arg(url);
    let out = lab.run(c, secs(20));
    if !out.success() {
        return Err(out.describe_failure());
    }
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
    let code = code
        .trim()
        .parse()
        .map_err(|_| format!("no status code from curl {url}: {}", out.stdout))?;
    Ok((code, body.to_string()))
}
