//! One module per command family; each function does one command.

mod audit;
mod ca;
mod identity;
mod token;
mod up;

use crate::args::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Up(a) => up::run(g, a).await,
        Command::Ca(c) => ca::run(g, c).await,
        Command::Token(c) => token::run(g, c).await,
        Command::Identity(c) => identity::run(g, c).await,
        Command::Agents => identity::agents(g).await,
        Command::Audit(c) => audit::run(g, c).await,
    }
}
