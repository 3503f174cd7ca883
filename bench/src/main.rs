//! wardmesh benchmarks. Each benchmark is a subcommand with its own module; `main` only
//! parses the arguments and dispatches. Every run prints the machine facts first and a
//! table last, so a result can be pasted into `bench/RESULTS.md` with the command that
//! produced it.

mod backend;
mod handshakes;
mod http1;
mod idle_conns;
mod ingest;
mod issuance;
mod machine;
mod mesh;
mod policy_eval;
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
    /// Flow records per second into the store (SQLite, and PostgreSQL if given a URL).
    Ingest(ingest::Args),
    /// The data-plane tax: direct vs HAProxy pair vs wardmesh agent pair (wrk), plus TLS
    /// handshakes/s at the inbound port and 1,000 idle keep-alive connections.
    Mesh(mesh::Args),
    /// Evaluation latency of the clinic policy (p50/p99 over many evaluations).
    PolicyEval(policy_eval::Args),
    /// The plain HTTP backend of `mesh` (started by it).
    Backend(backend::Args),
    /// New mTLS connections per second at an agent's inbound port (started by `mesh`).
    Handshakes(handshakes::Args),
    /// Idle keep-alive connections through a proxy (started by `mesh`).
    IdleConns(idle_conns::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Issuance(args) => issuance::run(args).map(|t| t.errors()),
        Command::Ingest(args) => ingest::run(args).map(|t| t.errors()),
        Command::Mesh(args) => mesh::run(args),
        Command::PolicyEval(args) => policy_eval::run(args, true),
        Command::Backend(args) => backend::run(args).map(|()| 0),
        Command::Handshakes(args) => handshakes::run(args),
        Command::IdleConns(args) => idle_conns::run(args),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("benchmark finished with {errors} error(s); the numbers above are not valid");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
