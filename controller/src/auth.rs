//! Who is asking, and may they.
//!
//! Authentication: a client certificate that chained to the cluster CA during the TLS
//! handshake (user = CN, groups = O), or a bearer token from the token file
//! (kube-apiserver's CSV: `token,user,uid,"group1,group2"`). A token that is given must be
//! valid; without either the request is answered 401.
//!
//! Authorization: roles bound to users and groups in the configuration.
//! * `admin`: everything.
//! * `view`: get, list, watch (objects, their reports, events, container logs); not
//!   `exec`, which is `create` on `container/NAME/exec` as kube's pods/exec is.
//! * `metrics`: only `/metrics` (a scrape identity that reads no object).
//! * `node`: only for a user `node:<name>`: get and watch its own Node and its reports, and
//!   list or watch the events of its own Node. The agent itself talks to etcd with the same
//!   identity, where etcd's role confines it likewise.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use topo_schema::api::{ApiError, ErrorReason};
use topo_schema::{Kind, ObjectRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    View,
    Node,
    Metrics,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::View => "view",
            Role::Node => "node",
            Role::Metrics => "metrics",
        }
    }

    fn allows(self) -> &'static str {
        match self {
            Role::Admin => "everything",
            Role::View => "get, list, watch",
            Role::Node => "get and watch of its own node, its reports and events",
            Role::Metrics => "get of /metrics",
        }
    }
}

/// A role given to users and groups (the configuration's `bindings`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Binding {
    pub role: Role,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The identity of a verified client certificate: CN and every O.
pub fn identity_from_cert(der: &[u8]) -> Option<Identity> {
    topo_pki::serve::peer_of_cert(der).map(|p| Identity {
        user: p.user,
        groups: p.groups,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("failed to read the token file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
}

/// Bearer tokens and whom they stand for.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, Identity>);

/// Splits one CSV line; double quotes group commas.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            _ => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields.into_iter().map(|f| f.trim().to_string()).collect()
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&path.display().to_string(), &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Tokens, TokenFileError> {
        let mut map = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: &str| TokenFileError::Line {
                path: path.to_string(),
                line: i + 1,
                message: message.to_string(),
            };
            let f = csv_fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(err(
                    "expected token,user,uid[,\"group1,group2\"] with a token and a user",
                ));
            }
            if f[0].len() < 16 {
                return Err(err("the token is shorter than 16 characters"));
            }
            let groups = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let id = Identity {
                user: f[1].clone(),
                groups,
            };
            if map.insert(f[0].clone(), id).is_some() {
                return Err(err("the token appears twice"));
            }
        }
        Ok(Tokens(map))
    }

    /// The identity of `token`; compares every token in full (no early exit on a prefix).
    pub fn identify(&self, token: &str) -> Option<Identity> {
        let mut found = None;
        for (t, id) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(id.clone());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Delete,
    Apply,
    /// Probe the live dataplane and record the outcome (`topoctl verify`).
    Verify,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Apply => "apply",
            Verb::Verify => "verify",
        }
    }

    pub fn is_write(self) -> bool {
        matches!(
            self,
            Verb::Create | Verb::Update | Verb::Delete | Verb::Apply | Verb::Verify
        )
    }
}

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// All objects of a kind, or one.
    Objects { kind: Kind, name: Option<String> },
    /// What the agents report about one object.
    Reports(ObjectRef),
    /// Events, of one object or all.
    Events(Option<ObjectRef>),
    /// Manifest files (whatever they hold).
    Manifests,
    /// The controller's `/metrics`.
    Metrics,
    /// A container's log (read from its node's agent).
    Logs(ObjectRef),
    /// The live dataplane, as the agents probe it.
    Dataplane,
    /// A command run in a container (`topoctl exec`, through its node's agent): verb
    /// `create`, as kube's pods/exec, so only roles that may write may.
    Exec(ObjectRef),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Objects { kind, name: None } => write!(f, "{}", kind.plural()),
            Target::Objects {
                kind,
                name: Some(n),
            } => write!(f, "{}", ObjectRef::new(*kind, n.as_str())),
            Target::Reports(r) => write!(f, "the reports of {r}"),
            Target::Events(None) => write!(f, "events"),
            Target::Events(Some(r)) => write!(f, "the events of {r}"),
            Target::Manifests => write!(f, "manifests"),
            Target::Metrics => write!(f, "metrics"),
            Target::Logs(r) => write!(f, "the log of {r}"),
            Target::Dataplane => write!(f, "the dataplane"),
            Target::Exec(r) => write!(f, "{r}/exec"),
        }
    }
}

/// Roles bound to users and groups.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    bindings: Vec<Binding>,
}

impl Authorizer {
    pub fn new(bindings: Vec<Binding>) -> Self {
        Authorizer { bindings }
    }

    pub fn roles(&self, id: &Identity) -> Vec<Role> {
        let mut roles: Vec<Role> = self
            .bindings
            .iter()
            .filter(|b| {
                b.users.contains(&id.user) || b.groups.iter().any(|g| id.groups.contains(g))
            })
            .map(|b| b.role)
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    /// Ok when one of `id`'s roles allows `verb` on `target`; else a 403 naming all three.
    pub fn authorize(&self, id: &Identity, verb: Verb, target: &Target) -> Result<(), ApiError> {
        let roles = self.roles(id);
        if roles.iter().any(|r| allows(*r, id, verb, target)) {
            return Ok(());
        }
        let why = if roles.is_empty() {
            format!(
                "no role is bound to user {:?} or its groups ({})",
                id.user,
                if id.groups.is_empty() {
                    "none".to_string()
                } else {
                    id.groups.join(", ")
                }
            )
        } else {
            roles
                .iter()
                .map(|r| format!("role {} allows {}", r.as_str(), r.allows()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(ApiError::new(
            ErrorReason::Forbidden,
            format!(
                "user {:?} cannot {} {target}: {why}",
                id.user,
                verb.as_str()
            ),
        ))
    }
}

fn allows(role: Role, id: &Identity, verb: Verb, target: &Target) -> bool {
    match role {
        Role::Admin => true,
        Role::View => matches!(verb, Verb::Get | Verb::List | Verb::Watch),
        Role::Metrics => verb == Verb::Get && *target == Target::Metrics,
        Role::Node => {
            let Some(me) = topo_pki::node_of_user(&id.user) else {
                return false;
            };
            let own = |r: &ObjectRef| r.kind == Kind::Node && r.name == me;
            match (verb, target) {
                (
                    Verb::Get | Verb::Watch,
                    Target::Objects {
                        kind: Kind::Node,
                        name: Some(n),
                    },
                ) => n == me,
                (Verb::Get, Target::Reports(r)) => own(r),
                (Verb::List | Verb::Watch, Target::Events(Some(r))) => own(r),
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn authz() -> Authorizer {
        Authorizer::new(vec![
            Binding {
                role: Role::Admin,
                users: vec!["alice".into()],
                groups: vec!["topo:admins".into()],
            },
            Binding {
                role: Role::View,
                users: vec![],
                groups: vec!["topo:viewers".into()],
            },
            Binding {
                role: Role::Node,
                users: vec![],
                groups: vec!["topo:nodes".into()],
            },
        ])
    }

    fn obj(kind: Kind, name: &str) -> Target {
        Target::Objects {
            kind,
            name: Some(name.into()),
        }
    }

    #[test]
    fn view_reads_and_is_refused_writes_naming_user_verb_object() {
        let a = authz();
        let bob = id("bob", &["topo:viewers"]);
        assert!(a.authorize(&bob, Verb::List, &Target::Events(None)).is_ok());
        let e = a
            .authorize(&bob, Verb::Create, &obj(Kind::Container, "web"))
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "user \"bob\" cannot create container/web: role view allows get, list, watch"
        );
        let e = a
            .authorize(&id("eve", &[]), Verb::Get, &obj(Kind::Node, "n"))
            .unwrap_err();
        assert!(e.message.contains("no role is bound"), "{}", e.message);
        assert!(
            a.authorize(&id("alice", &[]), Verb::Apply, &Target::Manifests)
                .is_ok()
        );
        assert!(a.authorize(&bob, Verb::Get, &Target::Metrics).is_ok());
        let log = Target::Logs(ObjectRef::new(Kind::Container, "web"));
        assert!(a.authorize(&bob, Verb::Get, &log).is_ok());
        let e = a
            .authorize(&id("node:n1", &["topo:nodes"]), Verb::Get, &log)
            .unwrap_err();
        assert!(
            e.message
                .starts_with("user \"node:n1\" cannot get the log of container/web"),
            "{}",
            e.message
        );
        // Verifying sends probes into users' containers and writes conditions: admin only.
        assert!(
            a.authorize(&id("alice", &[]), Verb::Verify, &Target::Dataplane)
                .is_ok()
        );
        for who in [&bob, &id("node:n1", &["topo:nodes"])] {
            let e = a
                .authorize(who, Verb::Verify, &Target::Dataplane)
                .unwrap_err();
            assert!(
                e.message.contains("cannot verify the dataplane"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn exec_is_a_write_admin_may_and_view_may_not() {
        let a = authz();
        let exec = Target::Exec(ObjectRef::new(Kind::Container, "web"));
        assert!(a.authorize(&id("alice", &[]), Verb::Create, &exec).is_ok());
        let e = a
            .authorize(&id("bob", &["topo:viewers"]), Verb::Create, &exec)
            .unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "user \"bob\" cannot create container/web/exec: role view allows get, list, watch"
        );
        assert!(
            a.authorize(&id("node:n1", &["topo:nodes"]), Verb::Create, &exec)
                .is_err()
        );
    }

    #[test]
    fn the_metrics_role_reads_metrics_and_nothing_else() {
        let mut bindings = authz().bindings;
        bindings.push(Binding {
            role: Role::Metrics,
            users: vec![],
            groups: vec!["topo:metrics".into()],
        });
        let a = Authorizer::new(bindings);
        let scraper = id("metrics", &["topo:metrics"]);
        assert!(a.authorize(&scraper, Verb::Get, &Target::Metrics).is_ok());
        let e = a
            .authorize(&scraper, Verb::Get, &obj(Kind::Container, "web"))
            .unwrap_err();
        assert_eq!(
            e.message,
            "user \"metrics\" cannot get container/web: role metrics allows get of /metrics"
        );
        assert!(
            a.authorize(&scraper, Verb::List, &Target::Events(None))
                .is_err()
        );
        let node = id("node:node1", &["topo:nodes"]);
        assert!(a.authorize(&node, Verb::Get, &Target::Metrics).is_err());
    }

    #[test]
    fn a_node_sees_only_its_own_node() {
        let a = authz();
        let n1 = id("node:node1", &["topo:nodes"]);
        assert!(
            a.authorize(&n1, Verb::Get, &obj(Kind::Node, "node1"))
                .is_ok()
        );
        assert!(
            a.authorize(&n1, Verb::Get, &obj(Kind::Node, "node2"))
                .is_err()
        );
        assert!(
            a.authorize(
                &n1,
                Verb::List,
                &Target::Objects {
                    kind: Kind::Node,
                    name: None
                }
            )
            .is_err()
        );
        assert!(
            a.authorize(&n1, Verb::Get, &obj(Kind::Container, "web"))
                .is_err()
        );
        let own = ObjectRef::new(Kind::Node, "node1");
        assert!(
            a.authorize(&n1, Verb::List, &Target::Events(Some(own)))
                .is_ok()
        );
        assert!(a.authorize(&n1, Verb::List, &Target::Events(None)).is_err());
        assert!(
            a.authorize(&n1, Verb::Delete, &obj(Kind::Node, "node1"))
                .is_err()
        );
        // The node group without a node user name grants nothing.
        let odd = id("mallory", &["topo:nodes"]);
        assert!(
            a.authorize(&odd, Verb::Get, &obj(Kind::Node, "node1"))
                .is_err()
        );
    }

    #[test]
    fn token_file_in_kube_format() {
        let t = Tokens::parse(
            "t.csv",
            "# comment\n0123456789abcdef0123,ci,1,\"topo:viewers,ops\"\nfedcba98765432100000,bot,2\n",
        )
        .unwrap();
        let ci = t.identify("0123456789abcdef0123").unwrap();
        assert_eq!(ci.user, "ci");
        assert_eq!(ci.groups, vec!["topo:viewers", "ops"]);
        assert_eq!(t.identify("fedcba98765432100000").unwrap().groups.len(), 0);
        assert!(t.identify("nope").is_none());
        let e = Tokens::parse("t.csv", "short,u,1\n").unwrap_err();
        assert!(e.to_string().starts_with("t.csv:1:"), "{e}");
        assert!(Tokens::parse("t.csv", "0123456789abcdef0123\n").is_err());
    }
}
