//! `wardmesh-agent`: parse the command line, set up logging, hand over to `app::run`.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wardmesh_agent::app;
use wardmesh_agent::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Run(args) => {
            let mut config = args.into_config()?;
            // Compile policy modules in a child of this same binary (policy/precompile.rs).
            config.policy.compiler = std::env::current_exe().ok();
            app::run(config, shutdown_signal()).await
        }
        Command::InitIptables(args) => wardmesh_agent::iptables::main(args),
        Command::PrecompilePolicy(args) => wardmesh_agent::policy::precompile::main(args),
    }
}

/// Ctrl-C or SIGTERM (what Kubernetes sends).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
