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
    let filter: Targets = std::env::var("SHOAL_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .or_else(|| default.parse().ok())
        .unwrap_or_default();
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Whether stderr is a terminal (for colours).
pub fn stderr_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}
