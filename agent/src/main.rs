//! `agent --local 8080`: expose a local port (through a relay inside the agent unless
//! `--relay HOST` is given). `agent --help` lists the flags.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc: more throughput and less memory per connection than glibc's per-thread arenas,
/// which kept freed connection memory resident (figures in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = agent::cli::Cli::parse();
    match agent::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
