//! The figures `bench/swarm.sh` measured on real Docker Swarm in the same run, passed to
//! a bench as `SWARM_*` variables by `bench/run.sh` (`swarm_create_ms=…` → `SWARM_CREATE_MS`).

/// The Swarm version the figures are from, for a column's title: "Docker Swarm 20.10.24".
pub(crate) fn peer() -> String {
    match std::env::var("SWARM_VERSION") {
        Ok(v) if !v.trim().is_empty() => format!("Docker Swarm {}", v.trim()),
        _ => "Docker Swarm".to_owned(),
    }
}

/// A number `bench/swarm.sh` measured (`SWARM_<KEY>`), if it did.
pub(crate) fn figure(key: &str) -> Option<u64> {
    std::env::var(format!("SWARM_{key}")).ok().and_then(|v| v.trim().parse().ok())
}

/// A time it measured (`SWARM_<KEY>_MS`), or why there is none.
pub(crate) fn ms(key: &str) -> String {
    figure(&format!("{key}_MS")).map_or_else(|| "not measured".to_owned(), |ms| format!("{ms} ms"))
}
