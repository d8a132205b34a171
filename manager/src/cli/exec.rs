//! `shoal exec [-i] TARGET COMMAND...`: runs a command in a running task's container,
//! on whichever board it runs, through the manager (the CLI never reaches a board
//! itself). Output is streamed as it comes; the CLI exits with the command's code.

use std::path::Path;

use clap::Args;
use shoal_link::framed;
use shoal_proto::exec::{ExecFrame, ExecRequest, MAX_ARGS, MAX_ARG_LEN, MAX_CHUNK};
use shoal_proto::{frame, BoundedString, BoundedVec, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{CliError, Client};

/// `shoal exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep standard input open and send it to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// A service (its running task of the lowest slot), a task (`web.2`), a task ID or
    /// prefix, or a container name.
    pub target: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Runs the exec and returns the command's exit code.
pub async fn run(data_dir: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    let request = request(&args)?;
    let client = Client::connect(data_dir).await?;
    let (mut send, mut recv) = client.open_exec(request).await?;
    let input = async {
        if args.interactive {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; MAX_CHUNK];
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = Bytes::try_from(&buf[..n]).expect("a chunk fits a frame");
                if framed::send(&mut send, &ExecFrame::Stdin(chunk)).await.is_err() {
                    return;
                }
            }
            let _ = framed::send(&mut send, &ExecFrame::StdinClosed).await;
        }
        // The send side stays open until this process ends: the board kills the command
        // when it breaks (the CLI was killed), not when input merely ended.
        std::future::pending::<()>().await;
    };
    let output = async {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        loop {
            match framed::recv::<ExecFrame>(&mut recv, frame::MAX_FRAME_LEN).await {
                Ok(Some(ExecFrame::Stdout(b))) => {
                    stdout.write_all(b.as_slice()).await?;
                    stdout.flush().await?;
                }
                Ok(Some(ExecFrame::Stderr(b))) => {
                    stderr.write_all(b.as_slice()).await?;
                    stderr.flush().await?;
                }
                Ok(Some(ExecFrame::Exit(code))) => return Ok(code),
                Ok(Some(other)) => anyhow::bail!("unexpected frame from the node: {other:?}"),
                Ok(None) => anyhow::bail!("the node ended the exec without an exit code (did it restart?)"),
                Err(e) => anyhow::bail!("the exec stream broke: {e}"),
            }
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        code = output => code,
        () = input => unreachable!("the input side never ends by itself"),
        // Interrupted: say so to the manager at once (the command is killed on the board),
        // and exit as a shell does after the signal.
        _ = tokio::signal::ctrl_c() => Ok(130),
        _ = terminate.recv() => Ok(143),
    };
    client.close().await;
    code
}

/// The request, with the command checked against the wire's bounds.
fn request(args: &ExecArgs) -> Result<ExecRequest, CliError> {
    let bad = |m: String| CliError::Local(m);
    let target = shoal_proto::text(&args.target).map_err(|_| bad(format!("target {:?} is too long", args.target)))?;
    if args.command.len() > MAX_ARGS {
        return Err(bad(format!("at most {MAX_ARGS} arguments can be passed to exec")));
    }
    let mut cmd = BoundedVec::new();
    for a in &args.command {
        let arg = BoundedString::try_from(a.as_str())
            .map_err(|_| bad(format!("an argument longer than {MAX_ARG_LEN} bytes cannot be passed to exec")))?;
        let _ = cmd.push(arg);
    }
    Ok(ExecRequest { target, cmd, interactive: args.interactive })
}
