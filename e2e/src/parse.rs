//! Parsers for what the tools print: busybox ping, `ovs-vsctl --format=json`,
//! `ovs-ofctl --names dump-ports`, `ip -o link`, `ovsdb-client --timestamp monitor`,
//! `ovs-appctl coverage/show` and `fdb/stats-show`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

/// The summary line of a ping: `3 packets transmitted, 2 packets received, 33% packet loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }

    pub fn parse(text: &str) -> Option<PingStats> {
        let line = text.lines().find(|l| l.contains("packets transmitted"))?;
        let number_before = |marker: &str| -> Option<u32> {
            let head = &line[..line.find(marker)?];
            head.split(|c: char| !c.is_ascii_digit())
                .rfind(|s| !s.is_empty())?
                .parse()
                .ok()
        };
        Some(PingStats {
            transmitted: number_before(" packets transmitted")?,
            received: number_before(" packets received").or_else(|| number_before(" received"))?,
        })
    }
}

/// The sequence numbers busybox ping printed a reply for (`64 bytes from A: seq=12 ...`).
pub fn ping_reply_seqs(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| {
            let rest = l.split_once(" seq=")?.1;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The MAC addresses that answered busybox `arping` (`Unicast reply from A [MAC] 0.006ms`).
pub fn arping_macs(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| {
            let open = l.find('[')?;
            let close = l[open..].find(']')? + open;
            Some(l[open + 1..close].to_ascii_lowercase())
        })
        .collect()
}

/// One row of `ovs-vsctl --format=json list TABLE`, with OVSDB's typed values flattened:
/// a uuid becomes its string, a map a JSON object, a set an array (a one-element set is the
/// element itself, as OVSDB prints it).
pub fn ovsdb_rows(json: &str) -> Result<Vec<BTreeMap<String, Value>>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON ({e}): {json}"))?;
    let headings: Vec<String> = v
        .get("headings")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no headings in {json}"))?
        .iter()
        .map(|h| h.as_str().unwrap_or_default().to_string())
        .collect();
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no data in {json}"))?;
    Ok(data
        .iter()
        .filter_map(Value::as_array)
        .map(|row| {
            headings
                .iter()
                .cloned()
                .zip(row.iter().map(ovsdb_value))
                .collect()
        })
        .collect())
}

fn ovsdb_value(v: &Value) -> Value {
    let Some(a) = v.as_array() else {
        return v.clone();
    };
    match (a.first().and_then(Value::as_str), a.get(1)) {
        (Some("uuid" | "named-uuid"), Some(u)) => u.clone(),
        (Some("set"), Some(Value::Array(items))) => {
            Value::Array(items.iter().map(ovsdb_value).collect())
        }
        (Some("map"), Some(Value::Array(pairs))) => Value::Object(
            pairs
                .iter()
                .filter_map(Value::as_array)
                .filter_map(|p| {
                    let k = p.first()?;
                    let k = k.as_str().map_or_else(|| k.to_string(), str::to_string);
                    Some((k, ovsdb_value(p.get(1)?)))
                })
                .collect(),
        ),
        _ => v.clone(),
    }
}

/// A map column of an [`ovsdb_rows`] row as strings (numbers printed as they are).
pub fn string_map(row: &BTreeMap<String, Value>, column: &str) -> BTreeMap<String, String> {
    row.get(column)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Per-port packet counters, read live from ovs-vswitchd (OVSDB's `statistics` column is
/// refreshed only every 5 s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// `ovs-ofctl --names dump-ports BRIDGE`:
/// ```text
///   port  "tg-node2fbc7a6": rx pkts=6, bytes=476, drop=?, errs=?, frame=?, over=?, crc=?
///            tx pkts=13, bytes=1630, drop=?, errs=?, coll=?
/// ```
pub fn dump_ports(text: &str) -> BTreeMap<String, PortCounters> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    let pkts = |s: &str, dir: &str| -> Option<u64> {
        let i = s.find(&format!("{dir} pkts="))? + dir.len() + 6;
        s[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("port ") {
            let Some((name, tail)) = rest.split_once(':') else {
                current = None;
                continue;
            };
            let name = name.trim().trim_matches('"').to_string();
            let e: &mut PortCounters = out.entry(name.clone()).or_default();
            if let Some(n) = pkts(tail, "rx") {
                e.rx_packets = n;
            }
            current = Some(name);
        } else if let (Some(name), Some(n)) = (&current, pkts(t, "tx"))
            && let Some(e) = out.get_mut(name)
        {
            e.tx_packets = n;
        }
    }
    out
}

/// Interface names and indexes of `ip -o link show`: `7: tv-web1a1a08b@if2: <...> ...`.
pub fn ip_links(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let index = it.next()?.trim().parse().ok()?;
            let name = it.next()?.trim();
            let name = name.split('@').next()?.to_string();
            Some((name, index))
        })
        .collect()
}

/// One row change that `ovsdb-client --timestamp monitor DB TABLE COLUMNS` printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorChange {
    /// When ovsdb-client received the update (it prints UTC).
    pub time: DateTime<Utc>,
    /// `initial`, `insert`, `delete` or `modify`.
    pub action: String,
    pub row: String,
    /// The row's `name` column, when monitored.
    pub name: String,
    /// For `modify`: the columns whose value changed.
    pub changed: Vec<String>,
}

/// The updates of ovsdb-client's text output: blocks of a timestamp line, a heading, a
/// dashed line and rows whose cells start where their heading does (a modification is an
/// `old` row holding only the changed columns, then a `new` row without the uuid).
pub fn ovsdb_monitor(text: &str) -> Vec<MonitorChange> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Ok(naive) = NaiveDateTime::parse_from_str(line.trim(), "%Y-%m-%d %H:%M:%S%.3f") else {
            continue;
        };
        let time = naive.and_utc();
        let Some(heading) = lines.next() else { break };
        let starts: Vec<usize> = heading
            .char_indices()
            .filter(|&(i, c)| c != ' ' && (i == 0 || heading.as_bytes()[i - 1] == b' '))
            .map(|(i, _)| i)
            .collect();
        let names: Vec<&str> = heading.split_whitespace().collect();
        let cells = |row: &str| -> BTreeMap<&str, String> {
            names
                .iter()
                .zip(&starts)
                .enumerate()
                .map(|(k, (n, &a))| {
                    let b = starts
                        .get(k + 1)
                        .copied()
                        .unwrap_or(row.len())
                        .min(row.len());
                    (*n, row.get(a.min(b)..b).unwrap_or("").trim().to_string())
                })
                .collect()
        };
        let _dashes = lines.next();
        let mut old: Option<BTreeMap<&str, String>> = None;
        for row in lines.by_ref() {
            if row.trim().is_empty() {
                break;
            }
            let c = cells(row);
            let action = c.get("action").cloned().unwrap_or_default();
            if action == "old" {
                old = Some(c);
                continue;
            }
            let (row_id, action, changed) = match (action.as_str(), old.take()) {
                ("new", Some(o)) => (
                    o.get("row").cloned().unwrap_or_default(),
                    "modify".to_string(),
                    o.iter()
                        .filter(|(k, v)| !matches!(**k, "row" | "action") && !v.is_empty())
                        .map(|(k, _)| k.to_string())
                        .collect(),
                ),
                _ => (
                    c.get("row").cloned().unwrap_or_default(),
                    action,
                    Vec::new(),
                ),
            };
            out.push(MonitorChange {
                time,
                action,
                row: row_id,
                name: c.get("name").cloned().unwrap_or_default(),
                changed,
            });
        }
    }
    out
}

/// The `total:` of each event of `ovs-appctl coverage/show`.
pub fn coverage_totals(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (head, total) = l.rsplit_once("total:")?;
            let name = head.split_whitespace().next()?;
            Some((name.to_string(), total.trim().parse().ok()?))
        })
        .collect()
}

/// `ovs-appctl fdb/stats-show BRIDGE` as label → first number (`Total number of learned MAC
/// entries` → 6; `Current/maximum MAC entries in the table` → the current count).
pub fn fdb_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (label, value) = l.split_once(':')?;
            let n = value
                .split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())?
                .parse()
                .ok()?;
            Some((label.trim().to_string(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_text() {
        let t = "2026-11-28 15:51:02.617
row                                  action  name           type     options
------------------------------------ ------- -------------- -------- ------------------------------------
ed8da5d9-fe81-4240-ae97-818f4d7c2da5 initial tv-gre1b0351e  \"\"       {}
5034f6b8-deaf-4611-8f64-c63438df45e0 initial tg-node39a74c1 gre      {key=\"1\", remote_ip=\"192.168.100.3\"}

2026-11-28 15:51:03.689
row                                  action name           type options                              ofport link_state
------------------------------------ ------ -------------- ---- ------------------------------------ ------ ----------
cd8cd2bc-6629-41c0-bf7f-aca625e262bd old                                                             []     []
                                     new    tg-node476198b gre  {key=\"1\", remote_ip=\"192.168.100.4\"} 5      up

2026-11-28 15:51:07.301
row                                  action name           type
------------------------------------ ------ -------------- ----
cd8cd2bc-6629-41c0-bf7f-aca625e262bd delete tg-node476198b gre
";
        let c = ovsdb_monitor(t);
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(
            (c[0].action.as_str(), c[0].name.as_str()),
            ("initial", "tv-gre1b0351e")
        );
        assert_eq!(c[2].action, "modify");
        assert_eq!(c[2].name, "tg-node476198b");
        assert_eq!(c[2].row, "cd8cd2bc-6629-41c0-bf7f-aca625e262bd");
        assert_eq!(c[2].changed, vec!["link_state", "ofport"]);
        assert_eq!(c[3].action, "delete");
        assert_eq!(c[3].time.format("%H:%M:%S%.3f").to_string(), "15:51:07.301");
    }

    #[test]
    fn arping_answers() {
        let t = "ARPING 192.168.100.2 from 192.168.100.254 topo-ul
Unicast reply from 192.168.100.2 [d6:ba:07:da:90:f0] 0.006ms
Unicast reply from 192.168.100.2 [86:4b:be:53:27:46] 1.013ms
Unicast reply from 192.168.100.2 [D6:BA:07:DA:90:F0] 0.016ms
Sent 2 probe(s) (0 broadcast(s))
Received 3 response(s) (0 request(s), 0 broadcast(s))
";
        let m = arping_macs(t);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.contains("d6:ba:07:da:90:f0") && m.contains("86:4b:be:53:27:46"));
        assert!(arping_macs("Sent 2 probe(s)\nReceived 0 response(s)").is_empty());
    }

    #[test]
    fn coverage_and_fdb() {
        let cov =
            "Event coverage, avg rate over last: 5 seconds, last minute, last hour,  hash=598aa3ab:
bridge_reconfigure         0.0/sec     0.233/sec        0.0039/sec   total: 14
mac_learning_learned       0.0/sec     0.200/sec        0.0033/sec   total: 12
108 events never hit
";
        let c = coverage_totals(cov);
        assert_eq!(c.len(), 2);
        assert_eq!(c["bridge_reconfigure"], 14);
        let fdb = "Statistics for bridge \"tb-gre\":
  Current/maximum MAC entries in the table: 6/8192
  Total number of learned MAC entries     : 6
  Total number of port moved MAC entries  : 0
";
        let f = fdb_stats(fdb);
        assert_eq!(f["Current/maximum MAC entries in the table"], 6);
        assert_eq!(f["Total number of learned MAC entries"], 6);
        assert_eq!(f["Total number of port moved MAC entries"], 0);
    }

    #[test]
    fn ping_summary() {
        let out = "PING 10.2.1.2 (10.2.1.2): 56 data bytes\n64 bytes from 10.2.1.2: seq=0 ttl=64 time=3.481 ms\n\n--- 10.2.1.2 ping statistics ---\n150 packets transmitted, 147 packets received, 2% packet loss\n";
        let s = PingStats::parse(out).unwrap();
        assert_eq!((s.transmitted, s.received, s.lost()), (150, 147, 3));
        assert_eq!(PingStats::parse("ping: sendto: Network unreachable"), None);
        let dup = "3 packets transmitted, 3 packets received, 2 duplicates, 0% packet loss";
        assert_eq!(PingStats::parse(dup).unwrap().received, 3);
        assert_eq!(ping_reply_seqs(out), vec![0]);
    }

    #[test]
    fn ovsdb_json() {
        let j = r#"{"data":[[["uuid","8e3b"],"tg-node2",["map",[["key","1"],["remote_ip","192.168.100.2"]]],["map",[["rx_packets",9],["tx_packets",21]]],["set",[]],3]],"headings":["_uuid","name","options","statistics","error","ofport"]}"#;
        let rows = ovsdb_rows(j).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r["_uuid"], "8e3b");
        assert_eq!(r["name"], "tg-node2");
        assert_eq!(string_map(r, "options")["remote_ip"], "192.168.100.2");
        assert_eq!(string_map(r, "statistics")["tx_packets"], "21");
        assert_eq!(r["error"], serde_json::json!([]));
        assert_eq!(r["ofport"], 3);
    }

    #[test]
    fn ofctl_ports() {
        let t = r#"OFPST_PORT reply (xid=0x2): 4 ports
  port LOCAL: rx pkts=2, bytes=176, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=2, bytes=176, drop=0, errs=0, coll=0
  port  "tg-node36d1f28": rx pkts=1, bytes=90, drop=?, errs=?, frame=?, over=?, crc=?
           tx pkts=1214, bytes=214, drop=?, errs=?, coll=?
  port  "tv-web1a1a08b": rx pkts=17, bytes=42, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=2, bytes=176, drop=0, errs=0, coll=0
"#;
        let p = dump_ports(t);
        assert_eq!(
            p["tg-node36d1f28"],
            PortCounters {
                rx_packets: 1,
                tx_packets: 1214
            }
        );
        assert_eq!(p["tv-web1a1a08b"].rx_packets, 17);
        assert_eq!(p["LOCAL"].tx_packets, 2);
    }

    #[test]
    fn links() {
        let t =
            "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n7: tv-web1a1a08b@if2: <BROADCAST> mtu 1458\n";
        let l = ip_links(t);
        assert_eq!(l["lo"], 1);
        assert_eq!(l["tv-web1a1a08b"], 7);
    }
}
