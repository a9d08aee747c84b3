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
    let out = lab.run(c, secs(20)).ok();
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", ""));
    let code = code
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no status code from curl {url}: {}", out.stdout));
    (code, body.to_string())
}
