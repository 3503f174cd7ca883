//! One module per command family; each function does one command.

mod audit;
pub mod breakglass;
mod ca;
pub mod check;
pub mod consent;
pub mod flows;
mod identity;
pub mod inject;
pub mod install;
pub mod policy;
mod token;
mod up;

use crate::args::{Cli, Command};

pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    // Commands that print one document see jsonl as json; query commands that list rows
    // read `format` and print one object per line.
    cli.global.output = cli.global.format.document();
    let g = &cli.global;
    match cli.command {
        Command::Up(a) => up::run(g, a).await,
        Command::Ca(c) => ca::run(g, c).await,
        Command::Token(c) => token::run(g, c).await,
        Command::Identity(c) => identity::run(g, c).await,
        Command::Agents => identity::agents(g).await,
        Command::Audit(c) => audit::run(g, c).await,
        Command::Flows(a) => flows::run(g, a).await,
        Command::Policy(c) => policy::run(g, c).await,
        Command::Consent(c) => consent::run(g, c).await,
        Command::Breakglass(c) => breakglass::run(g, c).await,
        Command::Install(a) => install::run(g, a),
        Command::Inject(a) => inject::run(g, a),
        Command::Check(a) => check::run(g, a).await,
    }
}
