//! Logging set-up shared by every shoal binary: structured `tracing` records on stderr,
//! levels chosen per target with `SHOAL_LOG` (e.g. `debug`, `info,quinn=warn`).
//!
//! It uses `Targets` rather than `EnvFilter`: the same `target=level` syntax without the
//! regex engine, which would add hundreds of KiB to a board's static agent.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Installs the global subscriber. `default` applies when `SHOAL_LOG` is unset or
/// unparsable; colours only when `ansi` (a terminal).
pub fn init(default: &str, ansi: bool) {
    init_from("SHOAL_LOG", default, ansi);
}

/// [`init`] with the levels read from the variable `var` instead of `SHOAL_LOG`: for a
/// process whose stderr is not only its own (a container's shim writes into the
/// container's output until the workload runs), so that the agent's `SHOAL_LOG=info`
/// does not fill every container's log with libcontainer's notices.
pub fn init_from(var: &str, default: &str, ansi: bool) {
    let filter: Targets =
        std::env::var(var).ok().and_then(|s| s.parse().ok()).or_else(|| default.parse().ok()).unwrap_or_default();
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Whether stderr is a terminal (for colours).
pub fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}
