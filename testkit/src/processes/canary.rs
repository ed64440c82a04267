//! A tunnel kept busy with small round trips, to see how responsive the relay stays under
//! a test's load.

use std::net::SocketAddr;

use anyhow::Context;

use super::{AgentBinary, RelayBinary};

/// Another agent's tunnel whose round trips show how responsive the relay stays. Its echo
/// server and round trips run on a runtime of their own, so they measure the relay and
/// agents, not whatever load the test's own runtime is busy generating.
pub struct Canary {
    runtime: Option<tokio::runtime::Runtime>,
    pub public: SocketAddr,
    _agent: AgentBinary,
}

/// Round trips made, and the slowest one.
pub struct Rounds {
    pub count: usize,
    pub slowest: std::time::Duration,
}

impl Canary {
    pub async fn start(relay: &RelayBinary) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let echo = runtime.spawn(crate::echo_server()).await??;
        let (agent, public) = relay.agent(echo).await?;
        Ok(Self { runtime: Some(runtime), public, _agent: agent })
    }

    /// Round trips, each on a new connection, one per `pace`, until `stop` or `most` of them.
    pub fn run(
        &self,
        pace: std::time::Duration,
        most: usize,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Rounds>>> {
        let runtime = self.runtime.as_ref().context("the canary's runtime lives as long as the canary")?;
        Ok(runtime.spawn(round_trips(self.public, pace, most, stop)))
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        // Dropped inside the test's runtime, where a blocking shutdown is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn round_trips(
    public: SocketAddr,
    pace: std::time::Duration,
    most: usize,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Rounds> {
    let mut rounds = Rounds { count: 0, slowest: std::time::Duration::ZERO };
    let mut pace = tokio::time::interval(pace);
    while rounds.count < most {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = pace.tick() => {}
        }
        let message = format!("canary {}", rounds.count);
        let started = std::time::Instant::now();
        let echoed = crate::exchange(public, message.as_bytes()).await.context("canary round trip")?;
        rounds.slowest = rounds.slowest.max(started.elapsed());
        anyhow::ensure!(echoed == message.as_bytes(), "the canary's echo differs");
        rounds.count += 1;
    }
    Ok(rounds)
}
