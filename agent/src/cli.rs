//! The agent's command line: a few subcommands and flags, parsed by hand.
//!
//! A parser crate cost the static aarch64 agent 104 KiB (issue 12: its size) for eight
//! commands. This one takes the arguments and `SHOAL_DATA_DIR` as values and does no I/O:
//! it returns what to run, or the text to print and the exit code (help and version on
//! stdout with 0, a usage error on stderr with 2, as before). The help text comes from
//! the same tables the parser reads, so the two can't drift apart. Accepted as before:
//! `--flag VALUE` and `--flag=VALUE`, `--data-dir` before or after the subcommand, `-h`,
//! `--help` and `help [COMMAND]`, `-V` and `--version`, and everything after `--` taken
//! as it is for the commands that run another program.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use shoal_proto::Label;

/// What the agent was asked to do.
#[derive(Debug, PartialEq)]
pub(crate) struct Cli {
    /// Directory holding the node's identity and state.
    pub(crate) data_dir: PathBuf,
    pub(crate) command: Command,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Command {
    /// Join a cluster with a token, then keep running as its agent.
    Join { token: String, manager: String, force: bool, node: NodeArgs },
    /// Run the agent of a board that already joined.
    Run { node: NodeArgs },
    /// Images on this board.
    Image(ImageCommand),
    /// (internal) Monitor one container: started by the agent, outlives it.
    Shim { containers: PathBuf, state: PathBuf, id: String },
    /// (internal) Run a command inside a running container, for `shoal exec`.
    ExecIn { containers: PathBuf, state: PathBuf, id: String, args: Vec<String> },
    /// (internal) Watch an agent update.
    UpgradeWatch { pid: u32, exe: PathBuf, detach: bool, args: Vec<OsString> },
}

#[derive(Debug, PartialEq)]
pub(crate) enum ImageCommand {
    Load { archive: PathBuf },
    Ls,
}

/// The board's flags of `join` and `run`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct NodeArgs {
    pub(crate) hostname: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) labels: Vec<Label>,
}

/// Why parsing stopped short of a command: text for stdout (help, version; exit 0) or
/// for stderr (a usage error; exit 2).
#[derive(Debug, PartialEq)]
pub(crate) struct Stop {
    pub(crate) text: String,
    pub(crate) code: u8,
}

const NAME: &str = "shoal-agent";
const ABOUT: &str = "Run a board in a shoal cluster";
const DATA_DIR: Flag = Flag {
    long: "data-dir",
    value: "DIR",
    help: "Directory holding the node's identity and state [env: SHOAL_DATA_DIR] [default: /var/lib/shoal]",
};

#[derive(Clone, Copy)]
struct Flag {
    long: &'static str,
    /// The value's placeholder; empty for a switch.
    value: &'static str,
    help: &'static str,
}

struct Spec {
    /// The words that name it (`image load` is two).
    name: &'static str,
    about: &'static str,
    /// Left out of the command list (the agent's own internal commands).
    hidden: bool,
    flags: &'static [Flag],
    /// (placeholder, help); all required.
    positionals: &'static [(&'static str, &'static str)],
    /// Takes the arguments after `--`: `Some(required)`.
    trailing: Option<bool>,
}

const NODE_FLAGS: [Flag; 3] = [
    Flag {
        long: "hostname",
        value: "HOSTNAME",
        help: "Name of this board in `node ls` (default: the kernel's hostname)",
    },
    Flag { long: "advertise-addr", value: "ADDR", help: "Address other nodes reach this board on" },
    Flag { long: "label", value: "KEY=VALUE", help: "Node label KEY=VALUE (repeatable)" },
];
const CONTAINER_FLAGS: [Flag; 2] = [
    Flag { long: "containers", value: "DIR", help: "Directory of the agent's containers" },
    Flag { long: "state", value: "DIR", help: "libcontainer state directory" },
];

const SPECS: &[Spec] = &[
    Spec {
        name: "join",
        about: "Join a cluster with a token, then keep running as its agent",
        hidden: false,
        flags: &[
            Flag { long: "token", value: "TOKEN", help: "Token from `shoal manager join-token worker` (required)" },
            Flag { long: "force", value: "", help: "Replace this board's identity if it already joined a cluster" },
            NODE_FLAGS[0],
            NODE_FLAGS[1],
            NODE_FLAGS[2],
        ],
        positionals: &[("MANAGER", "Manager address, HOST[:PORT] (default port 4242)")],
        trailing: None,
    },
    Spec {
        name: "run",
        about: "Run the agent of a board that already joined (no token needed)",
        hidden: false,
        flags: &NODE_FLAGS,
        positionals: &[],
        trailing: None,
    },
    Spec { name: "image", about: "Images on this board", hidden: false, flags: &[], positionals: &[], trailing: None },
    Spec {
        name: "image load",
        about: "Side-load the images of an OCI archive (for this board's platform), e.g. from a USB stick on a board that can't reach its manager yet",
        hidden: false,
        flags: &[],
        positionals: &[("ARCHIVE", "The archive (an OCI image layout in a tar)")],
        trailing: None,
    },
    Spec { name: "image ls", about: "List the images this board holds", hidden: false, flags: &[], positionals: &[], trailing: None },
    Spec {
        name: "shim",
        about: "(internal) Monitor one container: started by the agent, outlives it",
        hidden: true,
        flags: &CONTAINER_FLAGS,
        positionals: &[("ID", "Container ID")],
        trailing: None,
    },
    Spec {
        name: "exec-in",
        about: "(internal) Run a command inside a running container, for `shoal exec`",
        hidden: true,
        flags: &CONTAINER_FLAGS,
        positionals: &[("ID", "Container ID")],
        trailing: Some(true),
    },
    Spec {
        name: "upgrade-watch",
        about: "(internal) Watch an agent update: restore the previous binary if the new agent exits or does not reach the manager in time",
        hidden: true,
        flags: &[
            Flag { long: "pid", value: "PID", help: "The agent process running the new binary" },
            Flag { long: "exe", value: "FILE", help: "The agent binary the update replaced" },
            Flag { long: "detach", value: "", help: "Start the watchdog detached, then return" },
        ],
        positionals: &[],
        trailing: Some(false),
    },
];

fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.name == name)
}

fn usage_error(text: String) -> Stop {
    Stop { text: format!("error: {text}\n\nFor more information, try '--help'.\n"), code: 2 }
}

fn utf8(v: &OsStr, what: &str) -> Result<String, Stop> {
    v.to_str().map(str::to_owned).ok_or_else(|| usage_error(format!("{what} is not valid UTF-8: use plain text")))
}

/// Parses the agent's arguments (`args` without the program's name); `env_data_dir` is
/// `SHOAL_DATA_DIR`'s value, used when `--data-dir` is not given.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>, env_data_dir: Option<OsString>) -> Result<Cli, Stop> {
    let mut args = args.into_iter();
    let mut data_dir: Option<PathBuf> = None;
    let mut help = false;
    // The command's words so far ("image", then "image load"), and what follows them.
    let mut name = String::new();
    let mut values: Vec<(&'static str, OsString)> = Vec::new();
    let mut positionals: Vec<OsString> = Vec::new();
    let mut trailing: Option<Vec<OsString>> = None;
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            positional(&mut name, &mut positionals, arg)?;
            continue;
        };
        if text == "--" {
            trailing = Some(args.by_ref().collect());
            break;
        }
        if text == "-h" || text == "--help" {
            help = true;
            continue;
        }
        if text == "-V" || text == "--version" {
            return Err(Stop { text: format!("{NAME} {}\n", env!("CARGO_PKG_VERSION")), code: 0 });
        }
        if let Some(long) = text.strip_prefix("--") {
            let (long, inline) = match long.split_once('=') {
                Some((l, v)) => (l, Some(OsString::from(v))),
                None => (long, None),
            };
            let flag = if long == DATA_DIR.long {
                &DATA_DIR
            } else {
                spec(&name)
                    .and_then(|s| s.flags.iter().find(|f| f.long == long))
                    .ok_or_else(|| usage_error(format!("unexpected argument '--{long}'")))?
            };
            let value = if flag.value.is_empty() {
                if inline.is_some() {
                    return Err(usage_error(format!("'--{long}' takes no value")));
                }
                OsString::new()
            } else {
                match inline.or_else(|| args.next()) {
                    Some(v) => v,
                    None => return Err(usage_error(format!("'--{long}' needs a value: --{long} <{}>", flag.value))),
                }
            };
            if flag.long == DATA_DIR.long {
                data_dir = Some(value.into());
            } else {
                values.push((flag.long, value));
            }
            continue;
        }
        if text.len() > 1 && text.starts_with('-') {
            return Err(usage_error(format!("unexpected argument '{text}'")));
        }
        if text == "help" && (name.is_empty() || name == "image") {
            // `[image] help [COMMAND…]`: the help of the command the words name.
            let words = name.split_whitespace().map(str::to_owned);
            let words: Vec<String> = words.chain(args.map(|a| a.to_string_lossy().into_owned())).collect();
            return Err(Stop { text: help_text(&words.join(" "))?, code: 0 });
        }
        positional(&mut name, &mut positionals, arg)?;
    }
    if help {
        return Err(Stop { text: help_text(&name)?, code: 0 });
    }
    let Some(spec) = spec(&name) else {
        return Err(usage_error(format!("a command is needed\n\n{}", usage(&name))));
    };
    if spec.name == "image" {
        return Err(usage_error(format!("a command is needed\n\n{}", usage("image"))));
    }
    if positionals.len() < spec.positionals.len() {
        let missing = spec.positionals[positionals.len()..].iter().map(|(p, _)| format!("<{p}>")).collect::<Vec<_>>();
        return Err(usage_error(format!("missing {}\n\n{}", missing.join(" "), usage(spec.name))));
    }
    if let Some(extra) = positionals.get(spec.positionals.len()) {
        return Err(usage_error(format!("unexpected argument '{}'", extra.to_string_lossy())));
    }
    if spec.trailing.is_none() && trailing.is_some() {
        return Err(usage_error(format!("'{}' takes no arguments after '--'", spec.name)));
    }
    if spec.trailing == Some(true) && trailing.as_ref().is_none_or(Vec::is_empty) {
        return Err(usage_error(format!("missing the command: {}", usage(spec.name))));
    }
    // An empty SHOAL_DATA_DIR counts as unset, as it did.
    let env_data_dir = env_data_dir.filter(|d| !d.is_empty()).map(PathBuf::from);
    let data_dir = data_dir.or(env_data_dir).unwrap_or_else(|| shoal_link::DEFAULT_DATA_DIR.into());
    let mut pos = positionals.into_iter();
    let mut found = Found { values };
    let command = match spec.name {
        "join" => Command::Join {
            token: found.required_text("token")?,
            manager: utf8(&pos.next().unwrap_or_default(), "<MANAGER>")?,
            force: found.switch("force")?,
            node: found.node()?,
        },
        "run" => Command::Run { node: found.node()? },
        "image load" => Command::Image(ImageCommand::Load { archive: pos.next().unwrap_or_default().into() }),
        "image ls" => Command::Image(ImageCommand::Ls),
        "shim" => Command::Shim {
            containers: found.required("containers")?.into(),
            state: found.required("state")?.into(),
            id: utf8(&pos.next().unwrap_or_default(), "<ID>")?,
        },
        "exec-in" => Command::ExecIn {
            containers: found.required("containers")?.into(),
            state: found.required("state")?.into(),
            id: utf8(&pos.next().unwrap_or_default(), "<ID>")?,
            args: trailing.unwrap_or_default().iter().map(|a| utf8(a, "the command")).collect::<Result<_, _>>()?,
        },
        _ => {
            let pid = found.required_text("pid")?;
            Command::UpgradeWatch {
                pid: pid.parse().map_err(|_| {
                    usage_error(format!("invalid value '{pid}' for '--pid <PID>': expected a process ID"))
                })?,
                exe: found.required("exe")?.into(),
                detach: found.switch("detach")?,
                args: trailing.unwrap_or_default(),
            }
        }
    };
    Ok(Cli { data_dir, command })
}

/// A word that is not a flag: the next word of the command's name while it names a
/// command with subcommands (none yet, or `image`), else an argument of the command.
fn positional(name: &mut String, positionals: &mut Vec<OsString>, arg: OsString) -> Result<(), Stop> {
    if !name.is_empty() && name != "image" {
        positionals.push(arg);
        return Ok(());
    }
    let word = arg.to_string_lossy();
    let next = if name.is_empty() { word.to_string() } else { format!("{name} {word}") };
    match spec(&next) {
        Some(_) => {
            *name = next;
            Ok(())
        }
        None => Err(usage_error(format!("unrecognized subcommand '{word}'\n\n{}", usage(name)))),
    }
}

/// The flags a command was given, taken out one by one.
struct Found {
    values: Vec<(&'static str, OsString)>,
}

impl Found {
    fn take(&mut self, long: &str) -> Result<Option<OsString>, Stop> {
        let mut hits = self.values.iter().filter(|(l, _)| *l == long);
        if hits.nth(1).is_some() {
            return Err(usage_error(format!("'--{long}' was given more than once: give it once")));
        }
        let i = self.values.iter().position(|(l, _)| *l == long);
        Ok(i.map(|i| self.values.remove(i).1))
    }

    /// Every value of a repeatable flag, in the order given.
    fn take_all(&mut self, long: &str) -> Vec<OsString> {
        let (hits, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.values).into_iter().partition(|(l, _)| *l == long);
        self.values = rest;
        hits.into_iter().map(|(_, v)| v).collect()
    }

    fn required(&mut self, long: &str) -> Result<OsString, Stop> {
        self.take(long)?.ok_or_else(|| usage_error(format!("'--{long}' is required")))
    }

    fn required_text(&mut self, long: &str) -> Result<String, Stop> {
        utf8(&self.required(long)?, &format!("--{long}"))
    }

    fn text(&mut self, long: &str) -> Result<Option<String>, Stop> {
        self.take(long)?.map(|v| utf8(&v, &format!("--{long}"))).transpose()
    }

    fn switch(&mut self, long: &str) -> Result<bool, Stop> {
        Ok(self.take(long)?.is_some())
    }

    fn node(&mut self) -> Result<NodeArgs, Stop> {
        let hostname = self.text("hostname")?;
        let advertise_addr = self.text("advertise-addr")?;
        let mut labels = Vec::new();
        for v in self.take_all("label") {
            let v = utf8(&v, "--label")?;
            labels.push(
                Label::parse(&v)
                    .map_err(|e| usage_error(format!("invalid value '{v}' for '--label <KEY=VALUE>': {e}")))?,
            );
        }
        Ok(NodeArgs { hostname, advertise_addr, labels })
    }
}

fn usage(name: &str) -> String {
    let Some(spec) = spec(name).filter(|s| !s.name.is_empty()) else {
        return format!("Usage: {NAME} [OPTIONS] <COMMAND>");
    };
    let mut out = format!("Usage: {NAME} {} [OPTIONS]", spec.name);
    if SPECS.iter().any(|s| s.name.starts_with(&format!("{} ", spec.name))) {
        out.push_str(" <COMMAND>");
    }
    for (p, _) in spec.positionals {
        out.push_str(&format!(" <{p}>"));
    }
    match spec.trailing {
        Some(true) => out.push_str(" -- <ARGS>..."),
        Some(false) => out.push_str(" [-- <ARGS>...]"),
        None => {}
    }
    out
}

/// The help of the command `name` names (the agent's own when empty).
fn help_text(name: &str) -> Result<String, Stop> {
    let spec = if name.is_empty() {
        None
    } else {
        Some(spec(name).ok_or_else(|| usage_error(format!("unrecognized subcommand '{name}'")))?)
    };
    let mut out = format!("{}\n\n{}\n", spec.map_or(ABOUT, |s| s.about), usage(name));
    let prefix = spec.map_or(String::new(), |s| format!("{} ", s.name));
    let subcommands: Vec<&Spec> = SPECS
        .iter()
        .filter(|s| !s.hidden && s.name.strip_prefix(prefix.as_str()).is_some_and(|rest| !rest.contains(' ')))
        .collect();
    let row = |out: &mut String, left: String, help: &str| out.push_str(&format!("  {left:<30} {help}\n"));
    if !subcommands.is_empty() {
        out.push_str("\nCommands:\n");
        for s in subcommands {
            row(&mut out, s.name[prefix.len()..].to_owned(), s.about);
        }
        row(&mut out, "help".to_owned(), "Print this message or the help of the given command");
    }
    if let Some(spec) = spec.filter(|s| !s.positionals.is_empty()) {
        out.push_str("\nArguments:\n");
        for (p, help) in spec.positionals {
            row(&mut out, format!("<{p}>"), help);
        }
    }
    out.push_str("\nOptions:\n");
    for flag in spec.map_or(&[][..], |s| s.flags).iter().chain([&DATA_DIR]) {
        let left = if flag.value.is_empty() {
            format!("    --{}", flag.long)
        } else {
            format!("    --{} <{}>", flag.long, flag.value)
        };
        row(&mut out, left, flag.help);
    }
    row(&mut out, "-h, --help".to_owned(), "Print help");
    row(&mut out, "-V, --version".to_owned(), "Print version");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Cli, Stop> {
        parse(args.iter().map(OsString::from), None)
    }

    fn error(args: &[&str]) -> String {
        let stop = parse_str(args).unwrap_err();
        assert_eq!(stop.code, 2, "{args:?}: {}", stop.text);
        assert!(stop.text.starts_with("error: "), "{}", stop.text);
        stop.text
    }

    #[test]
    fn join_takes_its_token_manager_and_board_flags_in_any_order() {
        let cli = parse_str(&[
            "join",
            "--token",
            "SHOAL-1-abc-def",
            "10.0.0.1:4242",
            "--hostname=pi4",
            "--advertise-addr",
            "10.0.0.7",
            "--label",
            "zone=attic",
            "--label=disk",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        assert_eq!(cli.data_dir, PathBuf::from("/d"));
        let Command::Join { token, manager, force, node } = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!((token.as_str(), manager.as_str(), force), ("SHOAL-1-abc-def", "10.0.0.1:4242", false));
        assert_eq!(node.hostname.as_deref(), Some("pi4"));
        assert_eq!(node.advertise_addr.as_deref(), Some("10.0.0.7"));
        assert_eq!(node.labels, vec![Label::parse("zone=attic").unwrap(), Label::parse("disk").unwrap()]);
        let cli = parse_str(&["--data-dir=/x", "join", "--force", "m", "--token", "t"]).unwrap();
        assert_eq!(cli.data_dir, PathBuf::from("/x"));
        assert!(matches!(cli.command, Command::Join { force: true, .. }));
    }

    #[test]
    fn the_data_dir_comes_from_the_flag_then_the_environment_then_the_default() {
        let env = Some(OsString::from("/env"));
        assert_eq!(parse(["run".into()], env.clone()).unwrap().data_dir, PathBuf::from("/env"));
        assert_eq!(
            parse(["run".into(), "--data-dir".into(), "/flag".into()], env).unwrap().data_dir,
            PathBuf::from("/flag")
        );
        assert_eq!(parse_str(&["run"]).unwrap().data_dir, PathBuf::from(shoal_link::DEFAULT_DATA_DIR));
        let empty = parse(["run".into()], Some(OsString::new())).unwrap();
        assert_eq!(empty.data_dir, PathBuf::from(shoal_link::DEFAULT_DATA_DIR));
        assert_eq!(parse_str(&["run"]).unwrap().command, Command::Run { node: NodeArgs::default() });
    }

    #[test]
    fn the_internal_commands_parse_as_the_agent_starts_them() {
        let cli = parse_str(&["--data-dir", "/d", "shim", "--containers", "/c", "--state", "/s", "web.1"]).unwrap();
        assert_eq!(cli.command, Command::Shim { containers: "/c".into(), state: "/s".into(), id: "web.1".into() });
        let cli =
            parse_str(&["exec-in", "--containers", "/c", "--state", "/s", "id", "--", "sh", "-c", "--help"]).unwrap();
        assert_eq!(
            cli.command,
            Command::ExecIn {
                containers: "/c".into(),
                state: "/s".into(),
                id: "id".into(),
                args: vec!["sh".into(), "-c".into(), "--help".into()]
            }
        );
        let cli = parse_str(&[
            "upgrade-watch",
            "--pid",
            "42",
            "--exe",
            "/a.prev",
            "--detach",
            "--",
            "--data-dir",
            "/d",
            "run",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            Command::UpgradeWatch {
                pid: 42,
                exe: "/a.prev".into(),
                detach: true,
                args: vec!["--data-dir".into(), "/d".into(), "run".into()]
            }
        );
        let cli = parse_str(&["upgrade-watch", "--pid", "1", "--exe", "/e"]).unwrap();
        assert!(matches!(cli.command, Command::UpgradeWatch { detach: false, ref args, .. } if args.is_empty()));
    }

    #[test]
    fn image_commands() {
        assert_eq!(
            parse_str(&["image", "load", "/usb/app.tar"]).unwrap().command,
            Command::Image(ImageCommand::Load { archive: "/usb/app.tar".into() })
        );
        assert_eq!(parse_str(&["image", "ls"]).unwrap().command, Command::Image(ImageCommand::Ls));
    }

    #[test]
    fn restart_arguments_parse_back_to_the_same_board_flags() {
        let node = NodeArgs {
            hostname: Some("pi".into()),
            advertise_addr: Some("10.0.0.2".into()),
            labels: vec![Label::parse("a=b").unwrap()],
        };
        let args = crate::restart_args(std::path::Path::new("/d"), &node);
        let cli = parse(args, None).unwrap();
        assert_eq!(cli, Cli { data_dir: "/d".into(), command: Command::Run { node } });
    }

    #[test]
    fn bad_input_is_a_usage_error_that_says_what_is_wrong() {
        assert!(error(&[]).contains("a command is needed"));
        assert!(error(&["bogus"]).contains("unrecognized subcommand 'bogus'"));
        assert!(error(&["image"]).contains("a command is needed"));
        assert!(error(&["image", "rm"]).contains("unrecognized subcommand 'rm'"));
        assert!(error(&["join", "m"]).contains("'--token' is required"));
        assert!(error(&["join", "--token", "t"]).contains("missing <MANAGER>"));
        assert!(error(&["join", "--token"]).contains("'--token' needs a value"));
        assert!(error(&["join", "--token", "t", "m", "extra"]).contains("unexpected argument 'extra'"));
        assert!(error(&["join", "--token", "t", "--token", "u", "m"]).contains("more than once"));
        assert!(error(&["join", "--token", "t", "m", "--force=yes"]).contains("takes no value"));
        assert!(error(&["run", "--token", "t"]).contains("unexpected argument '--token'"));
        assert!(error(&["run", "-x"]).contains("unexpected argument '-x'"));
        assert!(error(&["run", "--label", "=v"]).contains("invalid value '=v' for '--label <KEY=VALUE>'"));
        assert!(error(&["run", "--", "x"]).contains("takes no arguments after '--'"));
        assert!(error(&["exec-in", "--containers", "/c", "--state", "/s", "id"]).contains("missing the command"));
        assert!(error(&["exec-in", "--containers", "/c", "--state", "/s", "id", "--"]).contains("missing the command"));
        assert!(error(&["upgrade-watch", "--pid", "x", "--exe", "/e"]).contains("invalid value 'x' for '--pid <PID>'"));
        assert!(error(&["--data-dir"]).contains("'--data-dir' needs a value"));
    }

    #[test]
    fn help_lists_the_public_commands_and_each_commands_flags() {
        for args in [&["--help"][..], &["-h"], &["help"], &["--data-dir", "/d", "-h"]] {
            let stop = parse_str(args).unwrap_err();
            assert_eq!(stop.code, 0);
            assert!(stop.text.starts_with("Run a board in a shoal cluster\n\nUsage: shoal-agent [OPTIONS] <COMMAND>"));
            for word in ["join", "run", "image", "--data-dir <DIR>", "SHOAL_DATA_DIR", "/var/lib/shoal"] {
                assert!(stop.text.contains(word), "{word} missing from\n{}", stop.text);
            }
            assert!(!stop.text.contains("shim") && !stop.text.contains("upgrade-watch"), "{}", stop.text);
        }
        for args in [&["join", "--help"][..], &["help", "join"], &["join", "--token", "t", "-h"]] {
            let stop = parse_str(args).unwrap_err();
            assert_eq!(stop.code, 0);
            assert!(stop.text.contains("Usage: shoal-agent join [OPTIONS] <MANAGER>"), "{}", stop.text);
            for word in [
                "--token <TOKEN>",
                "--force",
                "--hostname <HOSTNAME>",
                "--advertise-addr <ADDR>",
                "--label <KEY=VALUE>",
            ] {
                assert!(stop.text.contains(word), "{word} missing from\n{}", stop.text);
            }
        }
        let stop = parse_str(&["image", "--help"]).unwrap_err();
        assert!(
            stop.text.contains("load") && stop.text.contains("ls") && stop.text.contains("<COMMAND>"),
            "{}",
            stop.text
        );
        assert_eq!(
            parse_str(&["image", "help", "ls"]).unwrap_err().text,
            parse_str(&["image", "ls", "-h"]).unwrap_err().text
        );
        let stop = parse_str(&["image", "load", "-h"]).unwrap_err();
        assert!(stop.text.contains("<ARCHIVE>"), "{}", stop.text);
        assert_eq!(parse_str(&["help", "bogus"]).unwrap_err().code, 2);
        let version = parse_str(&["-V"]).unwrap_err();
        assert_eq!(version, Stop { text: format!("shoal-agent {}\n", env!("CARGO_PKG_VERSION")), code: 0 });
        assert_eq!(parse_str(&["run", "--version"]).unwrap_err().code, 0);
    }

    #[test]
    fn arguments_that_are_not_utf8_are_refused_where_text_is_needed_and_kept_where_paths_are() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'/', 0xff]);
        let cli = parse(["image".into(), "load".into(), bad.clone()], None).unwrap();
        assert_eq!(cli.command, Command::Image(ImageCommand::Load { archive: bad.clone().into() }));
        let stop = parse(["join".into(), "--token".into(), bad.clone(), "m".into()], None).unwrap_err();
        assert!(stop.text.contains("--token is not valid UTF-8"), "{}", stop.text);
        let cli = parse(
            ["upgrade-watch".into(), "--pid".into(), "1".into(), "--exe".into(), "/e".into(), "--".into(), bad.clone()],
            None,
        )
        .unwrap();
        assert!(matches!(cli.command, Command::UpgradeWatch { ref args, .. } if args == &vec![bad.clone()]));
    }
}
