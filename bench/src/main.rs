//! wardmesh benchmarks. Each benchmark is a subcommand with its own module; `main` only
//! parses the arguments and dispatches. Every run prints the machine facts first and a
//! table last, so a result can be pasted into `bench/RESULTS.md` with the command that
//! produced it.

mod issuance;
mod machine;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wardmesh-bench",
    about = "wardmesh benchmarks; run through scripts/bench (release build)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates issued per second: the in-process signer and the control-plane API.
    Issuance(issuance::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Issuance(args) => issuance::run(args),
    };
    match result {
        Ok(table) if table.errors() == 0 => ExitCode::SUCCESS,
        Ok(table) => {
            eprintln!(
                "benchmark finished with {} error(s); the numbers above are not valid",
                table.errors()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
