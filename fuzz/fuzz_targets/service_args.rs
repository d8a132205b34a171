//! `shoal service create|update` flags and the value parsers behind them. The first
//! byte picks what the rest is: a NUL-separated argument list for `create` (then
//! turned into a spec) or `update` (then applied to a valid spec), or one flag value.
#![cfg_attr(feature = "libfuzzer", no_main)]

use clap::Parser;
use shoal_fuzz::fuzz_target;
use shoal_manager::cli::parse_heartbeat_period;
use shoal_manager::cli::service::{CreateArgs, UpdateArgs};
use shoal_proto::services::{parse_cpus, parse_duration_ms, parse_memory};
use shoal_proto::{Availability, Constraint, Label, PortConfig};

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct Create {
    #[command(flatten)]
    args: CreateArgs,
}

#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct Update {
    #[command(flatten)]
    args: UpdateArgs,
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match kind % 10 {
        0 => {
            if let Ok(c) = Create::try_parse_from(text.split('\0')) {
                let _ = c.args.spec();
            }
        }
        1 => {
            if let Ok(u) = Update::try_parse_from(text.split('\0')) {
                let base = Create::try_parse_from(["--name", "web", "-p", "8000:80", "-e", "A=1", "demo/app:1.0"])
                    .expect("the base spec's flags parse");
                let mut spec = base.args.spec().expect("the base spec is valid");
                if u.args.check().is_ok() {
                    let _ = u.args.apply(&mut spec);
                }
            }
        }
        2 => {
            if let Ok(p) = PortConfig::parse(text) {
                let _ = (p.published_text(), p.summary());
            }
        }
        3 => drop(Constraint::parse(text)),
        4 => drop(parse_memory(text)),
        5 => drop(parse_cpus(text)),
        6 => drop(parse_duration_ms(text)),
        7 => drop(parse_heartbeat_period(text)),
        8 => drop(Label::parse(text)),
        _ => drop(text.parse::<Availability>()),
    }
});
