//! What a person sees: the compiled agent on a pseudo-terminal (util-linux `script`) draws its
//! live view in place; piped, or asked for JSON logs, it prints plain lines and no escapes.
//! Run with `cargo build --workspace --bins && cargo test -p burrow-agent --test console`.

use std::{net::SocketAddr, process::Stdio};

use anyhow::Context;
use testkit::{
    STEP, echo_server, exchange,
    processes::{RelayBinary, agent_bin},
    random_bytes, round_trip,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};

/// The agent's command line against `relay`, exposing `local`.
fn agent_args(relay: &RelayBinary, local: SocketAddr) -> Vec<String> {
    let relay_args = ["--relay", &relay.addr.to_string(), "--fingerprint", &relay.fingerprint.to_string()];
    let mut args: Vec<String> = relay_args.iter().map(|s| s.to_string()).collect();
    args.extend(["--local".into(), local.to_string(), "--inspect".into(), "off".into()]);
    args
}

/// The agent on a pseudo-terminal, with what it printed both raw and as a screen shows it.
struct OnTerminal {
    script: Child,
    output: watch::Receiver<(String, String)>,
}

impl OnTerminal {
    fn start(relay: &RelayBinary, args: &[String]) -> anyhow::Result<Self> {
        // `exec` makes the agent the direct child of `script`, so the test can signal it.
        let command = format!("exec {} {}", agent_bin()?.display(), args.join(" "));
        let mut script = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("TERM", "xterm-256color")
            .env("BURROW_TOKEN", relay.token()?)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("util-linux `script` runs the agent on a pseudo-terminal")?;
        let mut stdout = script.stdout.take().context("stdout is piped")?;
        let (publish, output) = watch::channel((String::new(), String::new()));
        tokio::spawn(async move {
            let (mut raw, mut chunk) = (Vec::new(), [0u8; 8192]);
            while let Ok(n @ 1..) = stdout.read(&mut chunk).await {
                raw.extend_from_slice(&chunk[..n]);
                // Replayed from the start, so a character split across reads is never garbled.
                let text = String::from_utf8_lossy(&raw).into_owned();
                let mut terminal = Terminal::default();
                terminal.feed(&text);
                publish.send_replace((text, terminal.screen()));
            }
        });
        Ok(Self { script, output })
    }

    /// The screen once `test` holds for the raw output and the screen.
    async fn until(&mut self, test: impl Fn(&str, &str) -> bool) -> anyhow::Result<String> {
        let waited = tokio::time::timeout(STEP, self.output.wait_for(|(raw, screen)| test(raw, screen)))
            .await
            .map(|shown| shown.map(|shown| shown.1.clone()));
        let (raw, screen) = self.output.borrow().clone();
        waited
            .with_context(|| format!("the terminal never showed it; screen:\n{screen}\nraw: {raw:?}"))?
            .context("the agent's output ended")
    }

    /// Sends SIGTERM to the agent; returns its exit code and the last screen.
    async fn terminate(mut self) -> anyhow::Result<(i32, String)> {
        let script = self.script.id().context("script still running")?;
        let children = std::fs::read_to_string(format!("/proc/{script}/task/{script}/children"))?;
        let agent = children.split_whitespace().next().context("the agent runs under script")?;
        Command::new("kill").args(["-TERM", agent]).status().await?;
        let status = tokio::time::timeout(STEP, self.script.wait()).await??;
        // The reader drops its end once it has read everything the agent printed.
        tokio::time::timeout(STEP, async { while self.output.changed().await.is_ok() {} }).await?;
        let screen = self.output.borrow().1.clone();
        Ok((status.code().context("script exited by signal")?, screen))
    }
}

/// Just enough of a terminal for the console's escapes: rows of text, a cursor, cursor up,
/// erase to end of line and of screen; colours and modes are ignored.
#[derive(Default)]
struct Terminal {
    rows: Vec<Vec<char>>,
    row: usize,
    col: usize,
}

impl Terminal {
    fn feed(&mut self, text: &str) {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => self.col = 0,
                '\n' => self.row += 1,
                '\x1b' if chars.next_if_eq(&'[').is_some() => {
                    let mut params = String::new();
                    while let Some(p) = chars.next_if(|c| !c.is_ascii_alphabetic()) {
                        params.push(p);
                    }
                    self.escape(&params, chars.next().unwrap_or('m'));
                }
                c => {
                    let col = self.col;
                    let row = self.line();
                    if row.len() <= col {
                        row.resize(col + 1, ' ');
                    }
                    row[col] = c;
                    self.col += 1;
                }
            }
        }
    }

    fn escape(&mut self, params: &str, command: char) {
        let col = self.col;
        match command {
            'A' => self.row = self.row.saturating_sub(params.parse().unwrap_or(1)),
            'K' => self.line().truncate(col),
            'J' => {
                self.line().truncate(col);
                self.rows.truncate(self.row + 1);
            }
            _ => {}
        }
    }

    fn line(&mut self) -> &mut Vec<char> {
        if self.rows.len() <= self.row {
            self.rows.resize(self.row + 1, Vec::new());
        }
        &mut self.rows[self.row]
    }

    fn screen(&self) -> String {
        let lines: Vec<String> =
            self.rows.iter().map(|r| r.iter().collect::<String>().trim_end().to_string()).collect();
        lines.join("\n")
    }
}

/// The `tcp://HOST:PORT` address on a screen or line.
fn public_address(text: &str) -> anyhow::Result<SocketAddr> {
    let url = text.split_whitespace().find_map(|w| w.strip_prefix("tcp://")).context("a tcp:// address")?;
    Ok(url.parse()?)
}

#[tokio::test]
async fn a_person_sees_the_url_online_and_the_count_move_after_a_visitor() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let echo = echo_server().await?;
    let mut agent = OnTerminal::start(&relay, &agent_args(&relay, echo))?;
    let online = |screen: &str| screen.contains("online for") && screen.contains("tcp://");
    // The session's further links join right after it is online.
    let screen = agent.until(|_, screen| online(screen) && screen.contains("links 4/4")).await?;
    assert!(screen.contains(&format!("-> {echo}")), "{screen}");
    assert!(screen.contains(&format!("Relay       {}", relay.addr)), "{screen}");
    assert!(screen.contains("Path        QUIC · links 4/4 · rtt "), "{screen}");
    assert!(screen.contains("0 open · 0 total"), "{screen}");

    let public = public_address(&screen)?;
    assert_eq!(exchange(public, b"hello").await?, b"hello");
    let screen = agent.until(|_, screen| screen.contains("0 open · 1 total") && screen.contains("closed")).await?;
    assert!(screen.contains("in 5 B") && screen.contains("out 5 B"), "{screen}");
    let row = screen.lines().find(|l| l.contains("closed")).context("the visitor's row")?;
    assert!(row.trim_start().starts_with("127.0.0.1:") && row.contains("5 B"), "{row}");

    // A transfer still open shows its bytes so far, and its tunnel's rate moves. Rates are
    // taken over windows of a second, and the first began before the tunnel existed: a
    // transfer within it would never show a rate.
    agent.until(|_, screen| screen.contains("online for 1s")).await?;
    let mut held = tokio::net::TcpStream::connect(public).await?;
    let sent = random_bytes(1 << 20);
    assert!(round_trip(&mut held, &sent).await? == sent, "the echo differs");
    let moving = |line: &str| line.contains("1 open · 2 total · in 1.0 MiB (") && !line.contains("(0 B/s) · out");
    let so_far = |line: &str| line.ends_with("open") && line.matches("1.0 MiB").count() == 2;
    // Both on one screen, so a half-drawn frame over an older one does not pass for it.
    agent.until(|_, screen| screen.lines().any(moving) && screen.lines().any(so_far)).await?;
    drop(held);

    // Redrawn in place: frames keep coming, yet the screen holds one copy of the view.
    let screen = agent.until(|raw, _| raw.matches("burrow agent").count() >= 3).await?;
    assert_eq!(screen.matches("burrow agent").count(), 1, "{screen}");

    let (code, screen) = agent.terminate().await?;
    assert_eq!(code, 0);
    assert!(screen.contains("Session     stopped"), "the last frame stays: {screen}");
    Ok(())
}

#[tokio::test]
async fn piped_output_is_plain_lines_with_the_tunnel_line_and_no_escapes() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let echo = echo_server().await?;
    let mut agent = Command::new(agent_bin()?)
        .args(agent_args(&relay, echo))
        .env("BURROW_TOKEN", relay.token()?)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(agent.stdout.take().context("stdout is piped")?).lines();
    let mut stdout = Vec::new();
    let tunnel = loop {
        let line = tokio::time::timeout(STEP, lines.next_line()).await??.context("stdout ended early")?;
        stdout.push(line.clone());
        if line.starts_with("tunnel ") {
            break line;
        }
    };
    assert!(tunnel.starts_with("tunnel tcp-") && tunnel.ends_with(&format!("-> {echo}")), "{tunnel}");
    assert_eq!(exchange(public_address(&tunnel)?, b"hello").await?, b"hello");

    let pid = agent.id().context("agent running")?;
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    while let Some(line) = tokio::time::timeout(STEP, lines.next_line()).await?? {
        stdout.push(line);
    }
    let mut stderr = String::new();
    agent.stderr.take().context("stderr is piped")?.read_to_string(&mut stderr).await?;
    assert_eq!(tokio::time::timeout(STEP, agent.wait()).await??.code(), Some(0));
    let stdout = stdout.join("\n");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'), "escapes in\n{stdout}\n{stderr}");
    assert!(!stdout.contains("Session"), "no live view when piped: {stdout}");
    assert!(stderr.contains("session online"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn json_logs_turn_the_live_view_off_even_on_a_terminal() -> anyhow::Result<()> {
    let relay = RelayBinary::start(&[]).await?;
    let mut args = agent_args(&relay, echo_server().await?);
    args.extend(["--log-format".into(), "json".into()]);
    let mut agent = OnTerminal::start(&relay, &args)?;
    agent.until(|raw, _| raw.contains("tunnel tcp-") && raw.contains("session online")).await?;
    let (raw, _) = agent.output.borrow().clone();
    assert!(!raw.contains('\x1b'), "no escapes with --log-format json: {raw:?}");
    let logs: Vec<serde_json::Value> =
        raw.lines().filter(|l| l.starts_with('{')).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let online = logs.iter().find(|l| l["fields"]["message"] == "session online").context("a JSON event")?;
    assert_eq!(online["level"], "INFO");
    assert_eq!(online["fields"]["relay"], relay.addr.to_string());
    assert_eq!(agent.terminate().await?.0, 0);
    Ok(())
}
