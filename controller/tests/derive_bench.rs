//! `topo-bench` at a tiny size: it runs end to end against a real etcd and prints its table.

#[test]
fn bench_runs_small_and_reports_no_rewrites() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_topo-bench"))
        .args(["--nodes", "12", "--containers", "60", "--links", "60"])
        .args([
            "--small-nodes",
            "6",
            "--small-containers",
            "30",
            "--small-links",
            "30",
        ])
        .args(["--timeout", "120"])
        .arg("--controller-bin")
        .arg(env!("CARGO_BIN_EXE_topo-controller"))
        .output()
        .expect("run topo-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "topo-bench failed:\n{stdout}\n{stderr}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| small ") || l.starts_with("| main "))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // The last column counts slice entries written more than once: none may be.
        assert_eq!(cells[cells.len() - 2], "0", "{row}");
        assert!(!row.contains("timed out"), "{row}");
    }
}
