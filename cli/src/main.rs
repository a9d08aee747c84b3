use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use topoctl::args::{Cli, Command};
use topoctl::cmd::CliError;
use topoctl::config::Env;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_diff = matches!(cli.command, Command::Diff(_));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: failed to start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(topoctl::run(cli, Env::from_process()));
    // Watches spawned tasks that may still wait on the network.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(e, CliError::Reported(_)) {
                let _ = writeln!(std::io::stderr(), "error: {e}");
            }
            // kubectl diff: 1 means "differences", so its errors are above 1.
            ExitCode::from(if is_diff {
                topoctl::diff::EXIT_ERROR as u8
            } else {
                1
            })
        }
    }
}
