//! The fleet simulator's smoke run (`bench/src/fleet.rs`), so that it cannot rot: 30
//! simulated boards (the agent's own session and supervisor code, fake runtime) join a
//! real manager over QUIC, run 300 tasks, lose 3 boards at once and get their tasks
//! back elsewhere. The bench's full runs (thousands of boards) are `bench/run.sh`'s.

use std::process::Command;
use std::time::Instant;

use shoal_e2e::{bin, require_root};

#[test]
#[ignore = "needs root"]
fn fleet_simulator_smoke_run() {
    require_root();
    let started = Instant::now();
    let out = Command::new(bin("fleet-bench"))
        .args(["--boards", "30", "--tasks", "300", "--services", "3", "--cut", "3"])
        .args(["--idle", "1", "--heartbeat-period", "1s"])
        .env("SHOAL_BIN_DIR", shoal_e2e::bin_dir())
        .output()
        .expect("run fleet-bench");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fleet-bench failed:\n{stderr}\n{stdout}");
    eprintln!("{stdout}fleet smoke run: {:.1} s", started.elapsed().as_secs_f64());
    for row in ["30 boards joined", "300 tasks in 3 services", "all reported Running", "3 boards cut at once"] {
        assert!(stdout.contains(row), "no {row:?} row in:\n{stdout}");
    }
}
