//! How objects look on a terminal: kubectl-style tables, `-o name|json|yaml`.
//!
//! Pure (the time is a parameter) so tables are tested as text. A kind's columns are
//! declared once in [`header`] and filled by one `*_cells` function per kind in the same
//! order, so a column is added in two places that sit side by side.

use chrono::{DateTime, Utc};
use comfy_table::{ColumnConstraint, ContentArrangement, Width};
use topo_schema::api::List;
use topo_schema::{
    CONDITION_READY, ConditionStatus, Container, Kind, LABEL_DERIVED_FROM, Link, Network, Node,
    Resource, Tunnel, find_condition,
};

use crate::timefmt::age;

/// The space kubectl's tabwriter leaves between columns.
pub const COLUMN_GAP: u16 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "wide" => Format::Wide,
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "name" => Format::Name,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to render JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("failed to render YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// Renders rows under a header like kubectl: no borders, columns three spaces apart, no
/// trailing blanks. `min_widths` keeps later rows (of a watch) aligned with the first table.
pub fn render_table(
    header: &[String],
    rows: &[Vec<String>],
    show_header: bool,
    min_widths: &[usize],
) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.force_no_tty();
    t.set_content_arrangement(ContentArrangement::Disabled);
    if show_header {
        t.set_header(header.to_vec());
    }
    for r in rows {
        t.add_row(r.clone());
    }
    let n = header
        .len()
        .max(rows.iter().map(Vec::len).max().unwrap_or(0));
    for i in 0..n {
        let last = i + 1 == n;
        let pad = if last { 0 } else { COLUMN_GAP };
        if let Some(col) = t.column_mut(i) {
            col.set_padding((0, pad));
            if let Some(w) = min_widths.get(i).filter(|_| !last) {
                let w = u16::try_from(*w).unwrap_or(u16::MAX).saturating_add(pad);
                col.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(w)));
            }
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The width of each column (in characters) of a table, for [`render_table`]'s `min_widths`.
pub fn column_widths(header: &[String], rows: &[Vec<String>]) -> Vec<usize> {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            let len = c.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            match w.get_mut(i) {
                Some(x) => *x = (*x).max(len),
                None => w.push(len),
            }
        }
    }
    w
}

/// STATUS: `Ready` when the Ready condition is True, else its reason, else what its status says.
pub fn status_text(r: &Resource) -> String {
    match find_condition(r.conditions(), CONDITION_READY) {
        Some(c) if c.status == ConditionStatus::True => "Ready".into(),
        Some(c) if !c.reason.is_empty() => c.reason.clone(),
        Some(c) if c.status == ConditionStatus::False => "NotReady".into(),
        Some(_) => "Unknown".into(),
        None => "Pending".into(),
    }
}

/// `container/redis`, as `-o name` and `get all` print it.
pub fn kind_name(r: &Resource) -> String {
    r.object_ref().to_string()
}

pub fn header(kind: Kind, wide: bool) -> Vec<String> {
    let mut h = vec!["NAME", "STATUS", "AGE"];
    h.extend_from_slice(match kind {
        Kind::Node => &["ADDRESS", "DATAPATH"],
        Kind::Network => &["CIDR", "BLOCK", "MTU", "GREKEY", "TOPOLOGY"],
        Kind::Container => &["NODE", "IMAGE", "ADDRESSES"],
        Kind::Link => &["FROM", "TO", "LISTEN", "ENDPOINT"],
        Kind::Tunnel => &["NETWORK", "ENDS"],
    });
    if wide {
        h.extend_from_slice(match kind {
            Kind::Node => &["BLOCKS", "AGENT-VERSION"],
            Kind::Network => &["NODES"],
            Kind::Container => &["CONTAINER-ID", "RESTARTS", "PORTS"],
            Kind::Link => &["PROTOCOL", "ALIAS"],
            Kind::Tunnel => &["DERIVED-FROM"],
        });
    }
    h.into_iter().map(String::from).collect()
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "<none>".into())
}

/// One table row; `qualified` names it `kind/name` (as `get all` does).
pub fn row(r: &Resource, wide: bool, qualified: bool, now: DateTime<Utc>) -> Vec<String> {
    let name = if qualified {
        kind_name(r)
    } else {
        r.name().to_string()
    };
    let mut cells = vec![
        name,
        status_text(r),
        age(r.metadata().creation_timestamp, now),
    ];
    // The kind's own columns, in the order of [`header`].
    cells.extend(match r {
        Resource::Node(n) => node_cells(n, wide),
        Resource::Network(n) => network_cells(n, wide),
        Resource::Container(c) => container_cells(c, wide),
        Resource::Link(l) => link_cells(l, wide),
        Resource::Tunnel(t) => tunnel_cells(t, wide),
    });
    cells
}

/// `k=v,k=v`, or `<none>`.
fn pairs<K: std::fmt::Display, V: std::fmt::Display>(
    m: impl IntoIterator<Item = (K, V)>,
) -> String {
    or_none(
        m.into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn node_cells(n: &Node, wide: bool) -> Vec<String> {
    let mut cells = vec![
        n.spec.address.to_string(),
        n.spec.datapath.ovs_type().to_string(),
    ];
    if wide {
        let st = n.status.clone().unwrap_or_default();
        cells.push(pairs(&st.blocks));
        cells.push(opt(st.agent_version));
    }
    cells
}

fn network_cells(n: &Network, wide: bool) -> Vec<String> {
    let st = n.status.clone().unwrap_or_default();
    let mut cells = vec![
        n.spec.cidr.to_string(),
        format!("/{}", n.spec.block_size),
        st.mtu
            .or(n.spec.mtu)
            .map(|m| m.to_string())
            .unwrap_or_else(|| "<auto>".into()),
        st.gre_key
            .or(n.spec.gre_key)
            .map(|k| k.to_string())
            .unwrap_or_else(|| "<auto>".into()),
        match n.spec.topology {
            topo_schema::Topology::Mesh => "mesh",
            topo_schema::Topology::Explicit => "explicit",
        }
        .into(),
    ];
    if wide {
        cells.push(or_none(
            st.blocks.keys().cloned().collect::<Vec<_>>().join(","),
        ));
    }
    cells
}

fn container_cells(c: &Container, wide: bool) -> Vec<String> {
    let st = c.status.clone().unwrap_or_default();
    let mut cells = vec![
        c.spec.node.clone(),
        c.spec.image.clone(),
        pairs(&st.addresses),
    ];
    if wide {
        cells.push(opt(st
            .container_id
            .as_deref()
            .map(|id| id.chars().take(12).collect::<String>())));
        cells.push(st.restart_count.to_string());
        let ports: Vec<String> = c
            .spec
            .ports
            .iter()
            .map(|p| match (p.host_ip, p.host_port) {
                // As `docker run -p` writes them: [IP:]HOSTPORT:CONTAINERPORT.
                (Some(ip), Some(h)) => format!("{ip}:{h}:{}/{}", p.container_port, p.protocol),
                (None, Some(h)) => format!("{h}:{}/{}", p.container_port, p.protocol),
                (_, None) => format!("{}/{}", p.container_port, p.protocol),
            })
            .collect();
        cells.push(or_none(ports.join(",")));
    }
    cells
}

fn link_cells(l: &Link, wide: bool) -> Vec<String> {
    let to = match (&l.spec.to.container, l.spec.to.address) {
        (Some(c), _) => format!("{c}:{}", l.spec.to.port),
        (None, Some(a)) => format!("{a}:{}", l.spec.to.port),
        (None, None) => format!(":{}", l.spec.to.port),
    };
    let listen = l
        .spec
        .listen_addr()
        .map(|a| a.to_string())
        .or_else(|| l.spec.listen.clone())
        .unwrap_or_else(|| "<none>".into());
    let mut cells = vec![
        l.spec.from.clone(),
        to,
        listen,
        opt(l.status.as_ref().and_then(|s| s.endpoint.clone())),
    ];
    if wide {
        cells.push(l.spec.protocol.to_string());
        cells.push(opt(l.spec.alias.clone()));
    }
    cells
}

fn tunnel_cells(t: &Tunnel, wide: bool) -> Vec<String> {
    let mut ends: Vec<String> = t.spec.nodes.clone();
    ends.extend(t.spec.node.clone());
    ends.extend(t.spec.remote.map(|a| a.to_string()));
    let mut cells = vec![t.spec.network.clone(), or_none(ends.join(","))];
    if wide {
        cells.push(opt(t.metadata.labels.get(LABEL_DERIVED_FROM).cloned()));
    }
    cells
}

/// A table of objects of one kind.
pub fn kind_table(
    kind: Kind,
    objects: &[Resource],
    wide: bool,
    qualified: bool,
    now: DateTime<Utc>,
) -> String {
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| row(o, wide, qualified, now))
        .collect();
    render_table(&header(kind, wide), &rows, true, &[])
}

/// `-o name`: one `kind/name` per line.
pub fn names(objects: &[Resource]) -> String {
    objects
        .iter()
        .map(|o| format!("{}\n", kind_name(o)))
        .collect()
}

/// `-o json|yaml` of a list: a `List` object.
pub fn list_document(objects: Vec<Resource>, format: Format) -> Result<String, OutputError> {
    document(&List::new(objects, None), format)
}

/// `-o json|yaml` of anything serializable, newline-terminated.
pub fn document<T: serde::Serialize>(v: &T, format: Format) -> Result<String, OutputError> {
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(v)?,
        _ => {
            let mut s = serde_json::to_string_pretty(v)?;
            s.push('\n');
            s
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeDelta;
    use topo_schema::*;

    pub fn ready(status: ConditionStatus, reason: &str, at: DateTime<Utc>) -> Vec<Condition> {
        vec![Condition {
            type_: CONDITION_READY.into(),
            status,
            reason: reason.into(),
            message: String::new(),
            last_transition_time: at,
        }]
    }

    pub fn container(name: &str, created: DateTime<Utc>) -> Resource {
        let mut c: Container = Object::new(
            Kind::Container,
            name,
            ContainerSpec {
                node: "node4".into(),
                image: "topo/busybox:latest".into(),
                command: vec![],
                env: Default::default(),
                image_pull_policy: PullPolicy::IfNotPresent,
                networks: vec![NetworkAttachment {
                    network: "overlay".into(),
                    ip: None,
                    interface: None,
                }],
                ports: vec![PortMapping {
                    container_port: 6379,
                    host_port: Some(50000),
                    protocol: Protocol::Tcp,
                    host_ip: None,
                }],
                ..Default::default()
            },
        );
        c.metadata.creation_timestamp = Some(created);
        c.status = Some(ContainerStatus {
            conditions: ready(ConditionStatus::True, "Running", created),
            addresses: [("overlay".to_string(), "10.2.4.10".to_string())].into(),
            container_id: Some("0123456789abcdef0123".into()),
            restart_count: 2,
            ..Default::default()
        });
        Resource::Container(c)
    }

    pub fn network(name: &str, created: DateTime<Utc>) -> Resource {
        let mut n: Network = Object::new(
            Kind::Network,
            name,
            NetworkSpec {
                cidr: "10.2.0.0/16".parse().unwrap(),
                block_size: 24,
                mtu: None,
                topology: Topology::Mesh,
                gre_key: None,
            },
        );
        n.metadata.creation_timestamp = Some(created);
        n.status = Some(NetworkStatus {
            conditions: ready(ConditionStatus::False, "NoNodes", created),
            gre_key: Some(7),
            mtu: Some(1458),
            blocks: [("node1".to_string(), "10.2.1.0/24".to_string())].into(),
            ..Default::default()
        });
        Resource::Network(n)
    }

    #[test]
    fn container_table_looks_like_kubectl() {
        let now = Utc::now();
        let objs = vec![
            container("redis", now - TimeDelta::seconds(5)),
            container("app1", now - TimeDelta::minutes(3)),
        ];
        let got = kind_table(Kind::Container, &objs, false, false, now);
        let want = "\
NAME    STATUS   AGE   NODE    IMAGE                 ADDRESSES
redis   Ready    5s    node4   topo/busybox:latest   overlay=10.2.4.10
app1    Ready    3m    node4   topo/busybox:latest   overlay=10.2.4.10
";
        assert_eq!(got, want);
    }

    #[test]
    fn wide_container_table_adds_columns() {
        let now = Utc::now();
        let got = kind_table(Kind::Container, &[container("redis", now)], true, true, now);
        let mut lines = got.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            [
                "NAME",
                "STATUS",
                "AGE",
                "NODE",
                "IMAGE",
                "ADDRESSES",
                "CONTAINER-ID",
                "RESTARTS",
                "PORTS"
            ]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row[0], "container/redis");
        assert_eq!(&row[6..], ["0123456789ab", "2", "50000:6379/tcp"]);
    }

    #[test]
    fn network_columns_and_status_reason() {
        let now = Utc::now();
        let got = kind_table(
            Kind::Network,
            &[network("overlay", now - TimeDelta::days(4))],
            true,
            false,
            now,
        );
        let want = "\
NAME      STATUS    AGE   CIDR          BLOCK   MTU    GREKEY   TOPOLOGY   NODES
overlay   NoNodes   4d    10.2.0.0/16   /24     1458   7        mesh       node1
";
        assert_eq!(got, want);
    }

    #[test]
    fn status_column() {
        let now = Utc::now();
        let mut c = container("x", now);
        assert_eq!(status_text(&c), "Ready");
        if let Resource::Container(o) = &mut c {
            o.status.as_mut().unwrap().conditions = ready(ConditionStatus::False, "", now);
        }
        assert_eq!(status_text(&c), "NotReady");
        if let Resource::Container(o) = &mut c {
            o.status.as_mut().unwrap().conditions = ready(ConditionStatus::Unknown, "", now);
        }
        assert_eq!(status_text(&c), "Unknown");
        if let Resource::Container(o) = &mut c {
            o.status = None;
        }
        assert_eq!(status_text(&c), "Pending");
    }

    #[test]
    fn watch_rows_keep_the_first_tables_alignment() {
        let h: Vec<String> = ["NAME", "STATUS"].map(String::from).to_vec();
        let rows = vec![vec!["a-long-name".to_string(), "Ready".to_string()]];
        let w = column_widths(&h, &rows);
        assert_eq!(w, [11, 6]);
        let later = render_table(&h, &[vec!["b".into(), "Pending".into()]], false, &w);
        assert_eq!(later, "b             Pending\n");
    }

    #[test]
    fn list_json_shape() {
        let now = Utc::now();
        let doc = list_document(vec![container("redis", now)], Format::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["apiVersion"], "topo.dev/v1alpha1");
        assert_eq!(v["kind"], "List");
        assert_eq!(v["items"][0]["kind"], "Container");
        assert_eq!(v["items"][0]["metadata"]["name"], "redis");
        assert_eq!(names(&[container("redis", now)]), "container/redis\n");
    }
}
