//! shoal-core owns the manager's decisions: which tasks exist, where they run, how an
//! update proceeds, what each node is told. It must do no I/O: no sockets, files, clock
//! or randomness. Time ([`plan::Now`]) and task IDs come in as parameters and decisions
//! go out as values, so a test drives a whole cluster on a virtual clock. Its only
//! dependencies are `shoal-proto` and plain data (serde, postcard); the manager's shell
//! (`shoal_manager::server`) loads state, calls [`pass::Reconciler::pass`], stores and
//! sends what it returns. `clippy.toml` beside this crate refuses the std I/O and clock
//! items.

pub mod dispatcher;
pub mod exec;
pub mod images;
pub mod ipam;
pub mod logs;
mod lookup;
pub mod membership;
pub mod netkeys;
pub mod netview;
pub mod nodes;
pub mod orchestrator;
pub mod pass;
pub mod placement;
pub mod plan;
pub mod rotation;
pub mod scheduler;
pub mod secrets;
pub mod services;
pub mod slots;
pub mod updater;
pub mod upgrade;

/// Milliseconds on a monotonic clock chosen by the caller (the shell uses time since the
/// process started; tests use whatever they like).
pub type Millis = u64;
