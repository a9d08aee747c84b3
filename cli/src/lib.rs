//! topoctl: the command line of topo (SPEC.md, "Command line: topoctl").
//!
//! Rendering is kept apart from I/O so it can be tested: [`output`] (tables, `-o`),
//! [`printer`] (`-o jsonpath|custom-columns`, `--sort-by`) over [`jsonpath`] (kubectl's
//! template dialect), [`explain`], [`graph`] (DOT and SVG), [`describe`], [`diff`], [`timefmt`]; [`client`] speaks
//! the controller's HTTP API and [`watch`] keeps a watch going across disconnects and
//! compactions. [`run`] dispatches a parsed command line to the verbs of [`cmd`].

pub mod args;
pub mod client;
pub mod cmd;
pub mod config;
pub mod describe;
pub mod diff;
pub mod editor;
pub mod exec;
pub mod explain;
pub mod graph;
pub mod inputs;
pub mod jsonpath;
pub mod manifests;
pub mod output;
pub mod printer;
pub mod timefmt;
pub mod tls;
pub mod waiter;
pub mod watch;

use crate::args::{Cli, Command};
use crate::cmd::{CliError, Ctx, delete, edit, events, get, label};
use crate::config::Env;

/// Runs one command; the exit status on success (diff's 1 means "changes").
pub async fn run(cli: Cli, env: Env) -> Result<i32, CliError> {
    let ctx = Ctx {
        server_flag: cli.server,
        env,
        request_timeout: cli.request_timeout,
    };
    match cli.command {
        Command::Apply(a) => cmd::apply(&ctx, a).await,
        Command::Get(a) => get::get(&ctx, a).await,
        Command::Describe(a) => cmd::describe_cmd(&ctx, a).await,
        Command::Delete(a) => delete::delete(&ctx, a).await,
        Command::Diff(a) => cmd::diff(&ctx, a).await,
        Command::Wait(a) => cmd::wait(&ctx, a).await,
        Command::Events(a) => events::events(&ctx, a).await,
        Command::Logs(a) => cmd::logs::logs(&ctx, a).await,
        Command::Exec(a) => cmd::exec::exec(&ctx, a).await,
        Command::Label(a) => label::label(&ctx, label::Which::Labels, a).await,
        Command::Annotate(a) => label::label(&ctx, label::Which::Annotations, a).await,
        Command::Edit(a) => edit::edit(&ctx, a).await,
        Command::Explain(a) => cmd::explain::explain(a),
        Command::Graph(a) => cmd::graph::graph(&ctx, a).await,
        Command::Verify(a) => cmd::verify::verify(&ctx, a).await,
        Command::Schema(a) => cmd::schema(a),
        Command::Completion(a) => cmd::completion(a),
        Command::Version(a) => cmd::version(&ctx, a).await,
    }
}
