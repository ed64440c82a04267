//! `relay`: run with no arguments for a working relay; `relay --help` lists the flags.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc: more throughput and less memory per connection than glibc's per-thread arenas,
/// which kept freed connection memory resident (figures in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = relay::cli::Cli::parse();
    burrow_common::logging::init("info");
    match relay::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
