//! `make bench`, the dataplane (issue 11): iperf3 between two containers on two hosts of the
//! lab, against iperf3 between the same two hosts' underlay addresses, TCP and UDP, in the
//! same run and interleaved (underlay, overlay, underlay, overlay, ...) so that the load of
//! the shared machine falls on both alike. Prints Markdown for BENCHMARKS.md: medians per
//! measure, TCP retransmits, UDP loss, and the overlay/underlay ratio of the medians.
//!
//! The overlay path: container veth → the network's OVS bridge → GRE encapsulation →
//! `br-phy` → underlay → the other host's `br-phy` → decapsulation → bridge → veth. The
//! underlay path starts and ends at `br-phy` (where the lab puts the host's address), so
//! the ratio is what topo's part of the path costs: one more OVS bridge per host, GRE, and
//! the containers' veths.
//!
//! iperf3 is the host's binary, run in the containers' network namespaces (nsenter), so the
//! container image needs nothing.
//!
//! Usage: `dataplane-bench [--secs 10] [--rounds 3]`

use std::time::Duration;

use serde_json::Value;
use topo_e2e::{Lab, converge, node_address};

struct Args {
    secs: u64,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let f = topo_e2e::flags::numeric(&[("secs", 10), ("rounds", 3)], std::env::args().skip(1))?;
    Ok(Args {
        secs: f["secs"].max(1),
        rounds: (f["rounds"] as usize).max(1),
    })
}

const NETWORK: &str = "dpnet";
const OVERLAY_PORT: &str = "5201";
const UNDERLAY_PORT: &str = "5202";
/// UDP datagrams that fit the overlay's MTU (1458 − 20 IP − 8 UDP) and the underlay's.
const UDP_LEN: &str = "1400";

fn manifest() -> String {
    let container = |name: &str, node: u32| {
        format!(
            "apiVersion: topo.dev/v1alpha1\nkind: Container\nmetadata: {{name: {name}}}\n\
             spec:\n  node: node{node}\n  image: topo/busybox:latest\n  command: [sleep, \"36000\"]\n\
             \x20 networks: [{{network: {NETWORK}}}]\n"
        )
    };
    format!(
        "apiVersion: topo.dev/v1alpha1\nkind: Network\nmetadata: {{name: {NETWORK}}}\n\
         spec: {{cidr: 10.78.0.0/16}}\n---\n{}---\n{}",
        container("dp1", 1),
        container("dp2", 2)
    )
}

/// Where a client runs: a container's namespace (by its PID) or a host's namespace.
enum Side {
    Container(u32),
    Host(u32),
}

impl Side {
    fn prefix(&self) -> Vec<String> {
        match self {
            Side::Container(pid) => vec![
                "nsenter".into(),
                "-t".into(),
                pid.to_string(),
                "-n".into(),
                "--".into(),
            ],
            Side::Host(node) => vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                format!("node{node}"),
            ],
        }
    }
}

#[derive(Default)]
struct Sample {
    mbits: f64,
    /// TCP: retransmitted segments; UDP: lost datagrams in percent.
    extra: f64,
}

fn iperf(
    lab: &Lab,
    from: &Side,
    to: &str,
    port: &str,
    udp: bool,
    secs: u64,
) -> Result<Sample, String> {
    let mut argv = from.prefix();
    let t = secs.to_string();
    argv.extend(["iperf3", "-J", "-c", to, "-p", port, "-t", &t].map(String::from));
    if udp {
        // -b 0: as fast as the sender can; the receiver's figures count what arrived.
        argv.extend(["-u", "-b", "0", "-l", UDP_LEN].map(String::from));
    }
    let mut cmd = lab.command(&argv[0]);
    cmd.args(&argv[1..]);
    let out = lab.run(cmd, Duration::from_secs(secs + 30));
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("iperf3 printed no JSON ({e}): {}", out.describe_failure()))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(format!("iperf3: {err}"));
    }
    let end = v.get("end").ok_or("iperf3's JSON has no end")?;
    let num = |p: &str| end.pointer(p).and_then(Value::as_f64);
    if udp {
        let bps = num("/sum_received/bits_per_second").or_else(|| num("/sum/bits_per_second"));
        let lost = num("/sum_received/lost_percent").or_else(|| num("/sum/lost_percent"));
        Ok(Sample {
            mbits: bps.ok_or("no UDP throughput")? / 1e6,
            extra: lost.unwrap_or(0.0),
        })
    } else {
        Ok(Sample {
            mbits: num("/sum_received/bits_per_second").ok_or("no TCP throughput")? / 1e6,
            extra: num("/sum_sent/retransmits").unwrap_or(0.0),
        })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let lab = Lab::up("dataplane", 2);
    lab.apply(&manifest(), converge());
    let dp2_ip = lab.address("dp2", NETWORK).to_string();
    let pid = |c: &str| {
        lab.container_pid(c)
            .unwrap_or_else(|| panic!("{c} is not running"))
    };
    let (pid1, pid2) = (pid("dp1"), pid("dp2"));
    let underlay2 = node_address(2).to_string();

    let server = |side: Side, port: &str| {
        let mut argv = side.prefix();
        argv.extend(["iperf3", "-s", "-p", port].map(String::from));
        let mut cmd = lab.command(&argv[0]);
        cmd.args(&argv[1..]);
        lab.spawn(cmd)
    };
    let _overlay_server = server(Side::Container(pid2), OVERLAY_PORT);
    let _underlay_server = server(Side::Host(2), UNDERLAY_PORT);
    std::thread::sleep(Duration::from_millis(500));

    // measure → (underlay samples, overlay samples), interleaved round by round.
    let mut results: Vec<(&str, Vec<Sample>, Vec<Sample>)> =
        vec![("TCP", vec![], vec![]), ("UDP", vec![], vec![])];
    for round in 0..args.rounds {
        for (i, udp) in [false, true].into_iter().enumerate() {
            let under = iperf(
                &lab,
                &Side::Host(1),
                &underlay2,
                UNDERLAY_PORT,
                udp,
                args.secs,
            );
            let over = iperf(
                &lab,
                &Side::Container(pid1),
                &dp2_ip,
                OVERLAY_PORT,
                udp,
                args.secs,
            );
            match (under, over) {
                (Ok(u), Ok(o)) => {
                    eprintln!(
                        "round {round} {}: underlay {:.0} Mbit/s, overlay {:.0} Mbit/s",
                        results[i].0, u.mbits, o.mbits
                    );
                    results[i].1.push(u);
                    results[i].2.push(o);
                }
                (u, o) => eprintln!("round {round}: a run failed: {:?} {:?}", u.err(), o.err()),
            }
        }
    }

    println!("### Dataplane: iperf3 container ↔ container across hosts vs host ↔ host underlay\n");
    println!(
        "`dataplane-bench --secs {} --rounds {}`: medians of {} interleaved rounds, lab of 2 hosts \
         (netdev datapath, GRE).\n",
        args.secs, args.rounds, args.rounds
    );
    println!("| measure | underlay | overlay (topo) | overlay / underlay |");
    println!("|---|---:|---:|---:|");
    for (proto, under, over) in &results {
        let (u, o) = (
            median(under.iter().map(|s| s.mbits).collect()),
            median(over.iter().map(|s| s.mbits).collect()),
        );
        let (ue, oe) = (
            median(under.iter().map(|s| s.extra).collect()),
            median(over.iter().map(|s| s.extra).collect()),
        );
        let what = if *proto == "TCP" {
            "retransmits"
        } else {
            "lost %"
        };
        println!(
            "| {proto} throughput, Mbit/s | {u:.0} | {o:.0} | {:.2} |",
            o / u
        );
        println!("| {proto} {what} | {ue:.1} | {oe:.1} | |");
    }
}
