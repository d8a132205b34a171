//! What an idle board costs on the wire, and how fast a dead one is found: a manager
//! and three boards in network namespaces, joined and idle; the bridge-side veth
//! counters of each board over a measuring window (every byte the board sent or
//! received, Ethernet headers included); then a power cut of one board and the time
//! until `node ls` says Down. A fourth board joins through the harness's relay and, once
//! the window is over, gets a bad link (10% loss and 300 ms each way, 1 Mbit/s): its
//! bytes over 10 s there, then a power cut under that impairment. Prints a Markdown section on stdout. Needs `cargo build
//! --bins` first; `IDLE_SECONDS` sets the window (default 30), `IDLE_MANAGER_ARGS`
//! extra `shoal manager run` arguments (e.g. `--heartbeat-period 5s`).

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_e2e::{wait_for, Cluster, Lab};

fn quiet(args: &[&str]) {
    let _ = std::process::Command::new(args[0]).args(&args[1..]).status();
}

fn main() -> Result<()> {
    let seconds: u64 = std::env::var("IDLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let extra = std::env::var("IDLE_MANAGER_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let lab = Lab::new(5)?;
    eprintln!("lab {}: boards' cables are {}v1..{}v3", lab.tag(), lab.tag(), lab.tag());
    // The lab's own IPv6 link-local chatter (router and multicast listener messages,
    // ~35 B/s on each cable) is not shoal's: IPv6 off everywhere in the lab.
    let tag = lab.tag().to_owned();
    for (i, h) in lab.hosts.iter().enumerate() {
        quiet(&["ip", "netns", "exec", &h.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        quiet(&["sysctl", "-qw", &format!("net.ipv6.conf.{tag}v{i}.disable_ipv6=1")]);
    }
    quiet(&["sysctl", "-qw", &format!("net.ipv6.conf.{tag}br.disable_ipv6=1")]);
    let m = &lab.hosts[0];
    let init = m.shoal(&["manager", "init", "--advertise-addr", &m.ip, "--hostname", "manager"]);
    let token = init.split_whitespace().find(|w| w.starts_with("SHOAL-1-")).unwrap_or_default().to_owned();
    let mut args = vec!["manager", "run"];
    args.extend_from_slice(&extra);
    let manager = m.spawn("shoal", &args);
    wait_for("the manager", Duration::from_secs(10), || m.run("shoal", &["node", "ls"]).status.success().then_some(()));
    let relay = lab.relay(format!("{}:4242", m.ip).parse()?);
    let mut agents = Vec::new();
    for (i, h) in lab.hosts.iter().enumerate().skip(1) {
        let to = if i == 4 { relay.addr.to_string() } else { format!("{}:4242", m.ip) };
        agents.push(h.spawn("shoal-agent", &["join", "--token", &token, "--hostname", &format!("node{i}"), &to]));
    }
    let mut c = Cluster { manager, agents, token, lab };
    c.wait_status_all("Ready", Duration::from_secs(20));
    // Joining, the first image and task sets, the first certificate exchange: let them pass.
    std::thread::sleep(Duration::from_secs(5));
    let boards = 1..4;
    let before: Vec<_> = boards.clone().map(|b| c.lab.hosts[b].link_counters()).collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let took = t.elapsed().as_secs_f64();
    let after: Vec<_> = boards.clone().map(|b| c.lab.hosts[b].link_counters()).collect();

    c.power_cut(3);
    let down = c.wait_status("node3", "Down", Duration::from_secs(30));

    relay.impair(10, Duration::from_millis(300));
    c.lab.hosts[4].shape(1000);
    let before_bad = c.lab.hosts[4].link_counters();
    std::thread::sleep(Duration::from_secs(10));
    let after_bad = c.lab.hosts[4].link_counters();
    let bad_rate = (after_bad.0 - before_bad.0) as f64 / 10.0;
    let bad_down_status = c.nodes().iter().find(|n| n.hostname == "node4").map(|n| n.status.clone());
    c.power_cut(4);
    let bad_down = c.wait_status("node4", "Down", Duration::from_secs(30));

    println!("### Idle cost on the wire (3 boards in network namespaces, {seconds} s window)\n");
    if !extra.is_empty() {
        println!("Manager run with `{}`.\n", extra.join(" "));
    }
    println!("| board | bytes/s | packets/s | bytes/packet | MB/day |");
    println!("|---|---|---|---|---|");
    let mut total = 0.0;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let bytes = (a.0 - b.0) as f64;
        let packets = (a.1 - b.1) as f64;
        total += bytes / took;
        println!(
            "| node{} | {:.1} | {:.2} | {:.0} | {:.2} |",
            i + 1,
            bytes / took,
            packets / took,
            if packets > 0.0 { bytes / packets } else { 0.0 },
            bytes / took * 86_400.0 / 1e6
        );
    }
    println!("\nMean: **{:.1} B/s per board**.\n", total / before.len() as f64);
    println!("| what | figure |");
    println!("|---|---|");
    println!("| power cut of an idle board on the LAN → marked Down | {:.0} ms |", down.as_secs_f64() * 1000.0);
    println!(
        "| a board on a bad link (10% loss, 300 ms each way, 1 Mbit/s), idle, first 10 s | {bad_rate:.1} B/s (status after: {}) |",
        bad_down_status.unwrap_or_default()
    );
    println!("| … power cut under that impairment → marked Down | {:.0} ms |", bad_down.as_secs_f64() * 1000.0);
    Ok(())
}
