//! Small manifest writers for the scenarios. Values are written as JSON scalars, which are
//! valid YAML, so no name or command needs escaping by hand.

use serde_json::json;

fn j(v: impl serde::Serialize) -> String {
    serde_json::to_string(&v).unwrap_or_else(|_| "null".to_string())
}

/// A Network with `topology: mesh` and /24 blocks.
pub fn network(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {}\nspec:\n  cidr: {}\n  blockSize: 24\n  topology: mesh\n",
        j(name),
        j(cidr)
    )
}

/// One attachment of a container: the network and, optionally, a static address.
#[derive(Debug, Clone, Copy)]
pub struct Attach<'a> {
    pub network: &'a str,
    pub ip: Option<&'a str>,
}

pub fn on<'a>(network: &'a str) -> Attach<'a> {
    Attach { network, ip: None }
}

pub fn on_static<'a>(network: &'a str, ip: &'a str) -> Attach<'a> {
    Attach {
        network,
        ip: Some(ip),
    }
}

/// A Container object of the lab's image.
pub fn container(name: &str, node: &str, command: &[String], networks: &[Attach<'_>]) -> String {
    container_of(name, node, "topo/busybox:latest", command, networks)
}

/// A Container object of `image`.
pub fn container_of(
    name: &str,
    node: &str,
    image: &str,
    command: &[String],
    networks: &[Attach<'_>],
) -> String {
    let mut s = format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata:\n  name: {}\n  labels: {}\nspec:\n  node: {}\n  image: {}\n  command: {}\n",
        j(name),
        j(json!({"topo-e2e": "true"})),
        j(node),
        j(image),
        j(command)
    );
    if !networks.is_empty() {
        s.push_str("  networks:\n");
        for a in networks {
            s.push_str(&format!("    - network: {}\n", j(a.network)));
            if let Some(ip) = a.ip {
                s.push_str(&format!("      ip: {}\n", j(ip)));
            }
        }
    }
    s
}

/// The command of a test service: an HTTP server on port 80 answering `/` with
/// `hello from NAME` and `/big` with 1 MiB of random bytes (its md5 in `/www/big.md5`).
pub fn web_command(name: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "mkdir -p /www && echo hello from {name} > /www/index.html && \
             dd if=/dev/urandom of=/www/big bs=1024 count=1024 2>/dev/null && \
             md5sum /www/big | cut -d' ' -f1 > /www/big.md5 && exec httpd -f -p 80 -h /www"
        ),
    ]
}

/// A container running [`web_command`].
pub fn web(name: &str, node: &str, networks: &[Attach<'_>]) -> String {
    container(name, node, &web_command(name), networks)
}

/// Documents joined into one multi-document manifest.
pub fn docs(parts: &[String]) -> String {
    parts.join("---\n")
}

/// A Link from the consumer `from` to port `port` of container `to`, listening at `listen`
/// (`ip:port`) inside the consumer.
pub fn link(name: &str, from: &str, to: &str, port: u16, listen: &str) -> String {
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Link\nmetadata:\n  name: {}\nspec:\n  from: {}\n  to: {{container: {}, port: {port}}}\n  listen: {}\n",
        j(name),
        j(from),
        j(to),
        j(listen)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use topo_schema::manifest::parse_file;

    #[test]
    fn manifests_parse_and_validate() {
        let m = docs(&[
            network("mesh", "10.31.0.0/16"),
            web("m1", "node1", &[on("mesh")]),
            web("m3", "node3", &[on_static("mesh", "10.31.200.3")]),
        ]);
        let parsed = parse_file("t.yaml", &m).unwrap_or_else(|e| panic!("{e:?}\n{m}"));
        assert_eq!(parsed.len(), 3);
        assert!(m.contains("ip: \"10.31.200.3\""));
    }
}
