//! Each step of the exchange as the one function that performs it, with its cap and its
//! timeout: the agent's end ([`AgentControl`], [`read_stream_header`]) and the relay's end
//! ([`receive_opening`], [`RelayControl`], [`open_visitor_stream`]).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{
    AgentMsg, FrameError, Granted, Hello, JoinTicket, LinkOpening, MAX_CONTROL_FRAME, MAX_HEADER_FRAME,
    PROTOCOL_VERSION, Refusal, ServerMsg, StreamHeader, TunnelSpec, Welcome, read_msg, write_msg,
};
use crate::{
    CloseCode, Secret,
    link::{Link, LinkError, StreamWriter},
    splice::Progress,
};

/// How long the agent waits for the answer to its Hello, its Join or an update.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the agent waits for a stream's header: the relay writes it as soon as it opens
/// the stream, so a slow one is broken.
pub const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a visitor waits for a stream slot at the agent; past this the agent is overloaded
/// or gone, and a hanging connection helps no one.
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the relay's answer to an update may wait for room on the control stream: an
/// agent that sends updates but never reads the answers must not hold its session.
pub const UPDATE_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How long a refusal waits to reach the agent before the link is closed, which discards
/// whatever is still unsent.
const REFUSAL_DELIVERY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer answered the {0} out of turn")]
    OutOfTurn(&'static str),
}

async fn within<T, E>(
    what: &'static str,
    after: Duration,
    step: impl Future<Output = Result<T, E>>,
) -> Result<T, ConversationError>
where
    ConversationError: From<E>,
{
    match tokio::time::timeout(after, step).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(ConversationError::Timeout { what, after }),
    }
}

/// The relay's answer to a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAnswer {
    /// Every tunnel asked for is open, in the order asked.
    Welcome(Welcome),
    Refused(Refusal),
}

/// The relay's answer to a Join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAnswer {
    /// The link carries the session's visitors from now on.
    Joined,
    Refused(Refusal),
}

/// The relay's answer to an update: the added tunnels it opened, and those it refused by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateAnswer {
    pub granted: Vec<Granted>,
    pub refused: Vec<(String, Refusal)>,
}

/// The agent's end of the control stream on a link of type `L`.
pub type AgentControlOn<L> = AgentControl<<L as Link>::Writer, <L as Link>::Reader>;

/// The relay's end of the control stream on a link of type `L`.
pub type RelayControlOn<L> = RelayControl<<L as Link>::Writer, <L as Link>::Reader>;

/// The agent's end of the control stream. Dropping it finishes the stream, so the session
/// holds it for as long as it runs.
pub struct AgentControl<W, R> {
    send: W,
    recv: R,
}

impl<W, R> AgentControl<W, R>
where
    W: AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin + Send,
{
    /// Opens the control stream on `link`.
    pub async fn open<L: Link<Writer = W, Reader = R>>(link: &L) -> Result<Self, ConversationError> {
        let (send, recv) = link.open().await?;
        Ok(Self::new(send, recv))
    }

    pub fn new(send: W, recv: R) -> Self {
        Self { send, recv }
    }

    /// Asks for `tunnels` with `token`, and waits for the relay's answer.
    pub async fn hello(&mut self, token: &Secret, tunnels: Vec<TunnelSpec>) -> Result<HelloAnswer, ConversationError> {
        let hello = Hello { version: PROTOCOL_VERSION, token: token.clone(), tunnels };
        write_msg(&mut self.send, &LinkOpening::Hello(hello)).await?;
        match within("answer to the Hello", WELCOME_TIMEOUT, read_msg(&mut self.recv, MAX_CONTROL_FRAME)).await? {
            ServerMsg::Welcome(welcome) => Ok(HelloAnswer::Welcome(welcome)),
            ServerMsg::Refused(refusal) => Ok(HelloAnswer::Refused(refusal)),
            ServerMsg::Updated { .. } | ServerMsg::Joined => Err(ConversationError::OutOfTurn("Hello")),
        }
    }

    /// Adds this link to the session `ticket` came with, and waits for the relay's answer.
    pub async fn join(&mut self, ticket: &JoinTicket) -> Result<JoinAnswer, ConversationError> {
        write_msg(&mut self.send, &LinkOpening::Join { ticket: ticket.clone() }).await?;
        match within("answer to the Join", WELCOME_TIMEOUT, read_msg(&mut self.recv, MAX_CONTROL_FRAME)).await? {
            ServerMsg::Joined => Ok(JoinAnswer::Joined),
            ServerMsg::Refused(refusal) => Ok(JoinAnswer::Refused(refusal)),
            ServerMsg::Welcome(_) | ServerMsg::Updated { .. } => Err(ConversationError::OutOfTurn("Join")),
        }
    }

    /// Closes the tunnels granted as `remove`, opens `add`, and waits for the relay's answer.
    pub async fn update(&mut self, add: Vec<TunnelSpec>, remove: Vec<u32>) -> Result<UpdateAnswer, ConversationError> {
        write_msg(&mut self.send, &AgentMsg::Update { add, remove }).await?;
        let what = "answer to the tunnel update";
        match within(what, WELCOME_TIMEOUT, read_msg(&mut self.recv, MAX_CONTROL_FRAME)).await? {
            ServerMsg::Updated { granted, refused } => Ok(UpdateAnswer { granted, refused }),
            _ => Err(ConversationError::OutOfTurn("tunnel update")),
        }
    }
}

/// Reads the header the relay writes at the start of each stream; the visitor's bytes that
/// follow it stay in `recv`.
pub async fn read_stream_header<R: AsyncRead + Unpin>(recv: &mut R) -> Result<StreamHeader, ConversationError> {
    within("stream header", STREAM_HEADER_TIMEOUT, read_msg(recv, MAX_HEADER_FRAME)).await
}

/// Waits up to `after` for the agent to open its control stream and send its Hello or Join.
pub async fn receive_opening<L: Link>(
    link: &L,
    after: Duration,
) -> Result<(LinkOpening, RelayControlOn<L>), ConversationError> {
    let received = async {
        let (send, recv) = link.accept().await?;
        let mut control = RelayControl::new(send, recv);
        let opening = control.read_opening().await?;
        Ok::<_, ConversationError>((opening, control))
    };
    within("Hello", after, received).await
}

/// The relay's end of the control stream. Dropping it finishes the stream, so the session
/// holds it for as long as it runs.
pub struct RelayControl<W, R> {
    send: W,
    recv: R,
}

impl<W, R> RelayControl<W, R>
where
    W: AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin + Send,
{
    pub fn new(send: W, recv: R) -> Self {
        Self { send, recv }
    }

    /// Reads the agent's Hello or Join; [`receive_opening`] bounds how long it may take.
    pub async fn read_opening(&mut self) -> Result<LinkOpening, FrameError> {
        read_msg(&mut self.recv, MAX_CONTROL_FRAME).await
    }

    /// Tells the agent its tunnels are open, and how to add links to its session.
    pub async fn welcome(&mut self, welcome: Welcome) -> Result<(), FrameError> {
        write_msg(&mut self.send, &ServerMsg::Welcome(welcome)).await
    }

    /// Tells the agent its link joined the session.
    pub async fn joined(&mut self) -> Result<(), FrameError> {
        write_msg(&mut self.send, &ServerMsg::Joined).await
    }

    /// The agent's next update, or `None` once it will send nothing more. Not cancel-safe:
    /// a frame half read when the future is dropped is lost.
    pub async fn next_update(&mut self) -> Result<Option<AgentMsg>, FrameError> {
        match read_msg(&mut self.recv, MAX_CONTROL_FRAME).await {
            Ok(update) => Ok(Some(update)),
            // The agent's end closed, or the session is going.
            Err(FrameError::Eof | FrameError::Io(_)) => Ok(None),
            Err(malformed) => Err(malformed),
        }
    }

    /// Answers the update just read.
    pub async fn answer_update(&mut self, answer: UpdateAnswer) -> Result<(), ConversationError> {
        let answer = ServerMsg::Updated { granted: answer.granted, refused: answer.refused };
        within("room for the update's answer", UPDATE_ANSWER_WAIT, write_msg(&mut self.send, &answer)).await
    }
}

impl<W, R> RelayControl<W, R>
where
    W: StreamWriter,
    R: AsyncRead + Unpin + Send,
{
    /// Tells the agent why nothing is open, then closes `link` with [`CloseCode::Refused`].
    pub async fn refuse(mut self, refusal: Refusal, link: &impl Link) {
        if write_msg(&mut self.send, &ServerMsg::Refused(refusal)).await.is_ok() && self.send.finish().is_ok() {
            // The close discards unsent data: let the refusal reach the agent first.
            tokio::time::timeout(REFUSAL_DELIVERY_WAIT, self.send.delivered()).await.ok();
        }
        link.close(CloseCode::Refused);
    }
}

/// Bytes read from a visitor before its stream was opened (such as a TLS ClientHello read for
/// its SNI), and where the visitor's bytes are counted.
pub struct FirstBytes<'a> {
    pub bytes: &'a [u8],
    pub progress: &'a Progress,
}

/// Opens a stream to the agent for a visitor and writes its header, then its `first` bytes.
/// A [`ConversationError::Timeout`] or [`ConversationError::Link`] means no stream could be had;
/// a [`ConversationError::Frame`] means the stream broke while being written.
pub async fn open_visitor_stream<L: Link>(
    link: &L,
    header: StreamHeader,
    first: Option<FirstBytes<'_>>,
) -> Result<(L::Writer, L::Reader), ConversationError> {
    let (mut send, recv) = within("stream slot at the agent", OPEN_STREAM_TIMEOUT, link.open()).await?;
    write_msg(&mut send, &header).await?;
    if let Some(FirstBytes { bytes, progress }) = first.filter(|first| !first.bytes.is_empty()) {
        // Counted before they are written on, as the splice counts.
        progress.add_tcp_to_stream(bytes.len() as u64);
        send.write_all(bytes).await.map_err(FrameError::Io)?;
    }
    Ok((send, recv))
}

impl ConversationError {
    /// Whether no stream could be had at all, as opposed to one that broke once open.
    pub fn is_no_stream(&self) -> bool {
        matches!(self, ConversationError::Timeout { .. } | ConversationError::Link(_))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream, ReadHalf, WriteHalf, duplex, split};

    use super::*;
    use crate::protocol::TunnelKind;

    type Ends = (
        AgentControl<WriteHalf<DuplexStream>, ReadHalf<DuplexStream>>,
        RelayControl<WriteHalf<DuplexStream>, ReadHalf<DuplexStream>>,
    );

    fn control_stream() -> Ends {
        let (agent, relay) = duplex(4096);
        let ((agent_recv, agent_send), (relay_recv, relay_send)) = (split(agent), split(relay));
        (AgentControl::new(agent_send, agent_recv), RelayControl::new(relay_send, relay_recv))
    }

    fn web() -> TunnelSpec {
        TunnelSpec { name: "web".into(), local: "127.0.0.1:8080".into(), kind: TunnelKind::Tcp { port: None } }
    }

    fn granted(id: u32) -> Granted {
        Granted { id, name: "web".into(), port: 20080, host: None, urls: Vec::new() }
    }

    fn welcome() -> Welcome {
        Welcome { tunnels: vec![granted(0)], ticket: JoinTicket([7; 32]), links: 4, fleet: Vec::new() }
    }

    #[tokio::test]
    async fn a_hello_is_welcomed_and_an_update_answered() -> anyhow::Result<()> {
        let (mut agent, mut relay) = control_stream();
        let relay_side = async {
            let LinkOpening::Hello(hello) = relay.read_opening().await? else { anyhow::bail!("no Hello") };
            assert_eq!((hello.version, hello.tunnels), (PROTOCOL_VERSION, vec![web()]));
            relay.welcome(welcome()).await?;
            let update = relay.next_update().await?;
            assert_eq!(update, Some(AgentMsg::Update { add: vec![web()], remove: vec![0] }));
            relay.answer_update(UpdateAnswer { granted: vec![granted(1)], refused: Vec::new() }).await?;
            anyhow::Ok(relay)
        };
        let agent_side = async {
            let answer = agent.hello(&Secret::new("t0ken"), vec![web()]).await?;
            assert_eq!(answer, HelloAnswer::Welcome(welcome()));
            let updated = agent.update(vec![web()], vec![0]).await?;
            assert_eq!(updated.granted, vec![granted(1)]);
            anyhow::Ok(agent)
        };
        let (mut relay, agent) = tokio::try_join!(relay_side, agent_side)?;
        drop(agent);
        assert_eq!(relay.next_update().await?, None, "a closed control stream ends the updates");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_times_the_hello_out() {
        let (mut agent, _relay) = control_stream();
        let err = agent.hello(&Secret::new("t0ken"), vec![web()]).await.unwrap_err();
        assert!(matches!(err, ConversationError::Timeout { after: WELCOME_TIMEOUT, .. }), "{err}");
    }

    #[tokio::test]
    async fn an_update_answer_to_a_hello_is_out_of_turn() -> anyhow::Result<()> {
        let (mut agent, mut relay) = control_stream();
        relay.answer_update(UpdateAnswer::default()).await?;
        let err = agent.hello(&Secret::new("t0ken"), vec![web()]).await.unwrap_err();
        assert!(matches!(err, ConversationError::OutOfTurn("Hello")), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn a_join_carries_the_ticket_and_is_answered() -> anyhow::Result<()> {
        let (mut agent, mut relay) = control_stream();
        let relay_side = async {
            let opening = relay.read_opening().await?;
            assert_eq!(opening, LinkOpening::Join { ticket: JoinTicket([7; 32]) });
            relay.joined().await?;
            anyhow::Ok(relay)
        };
        let (_relay, answer) = tokio::try_join!(relay_side, async { Ok(agent.join(&JoinTicket([7; 32])).await?) })?;
        assert_eq!(answer, JoinAnswer::Joined);
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_join_says_why() -> anyhow::Result<()> {
        let (mut agent, relay) = control_stream();
        let RelayControl { mut send, .. } = relay;
        write_msg(&mut send, &ServerMsg::Refused(Refusal::LinkLimit { max: 4 })).await?;
        let answer = agent.join(&JoinTicket([1; 32])).await?;
        assert_eq!(answer, JoinAnswer::Refused(Refusal::LinkLimit { max: 4 }));
        Ok(())
    }

    #[tokio::test]
    async fn a_welcome_answering_a_join_is_out_of_turn() -> anyhow::Result<()> {
        let (mut agent, mut relay) = control_stream();
        relay.welcome(welcome()).await?;
        let err = agent.join(&JoinTicket([1; 32])).await.unwrap_err();
        assert!(matches!(err, ConversationError::OutOfTurn("Join")), "{err}");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_times_the_join_out() {
        let (mut agent, _relay) = control_stream();
        let err = agent.join(&JoinTicket([1; 32])).await.unwrap_err();
        assert!(matches!(err, ConversationError::Timeout { after: WELCOME_TIMEOUT, .. }), "{err}");
    }

    #[test]
    fn a_ticket_never_shows_in_debug() {
        let shown = format!("{:?}", LinkOpening::Join { ticket: JoinTicket([0xab; 32]) });
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
    }

    #[tokio::test]
    async fn the_stream_header_leaves_the_visitor_bytes_in_place() -> anyhow::Result<()> {
        let (mut relay, mut agent) = duplex(1024);
        let header = StreamHeader::visitor(3, "192.0.2.1:5000".parse()?);
        write_msg(&mut relay, &header).await?;
        relay.write_all(b"SSH-2.0").await?;
        drop(relay);
        assert_eq!(read_stream_header(&mut agent).await?, header);
        let mut rest = Vec::new();
        agent.read_to_end(&mut rest).await?;
        assert_eq!(rest, b"SSH-2.0");
        Ok(())
    }
}
