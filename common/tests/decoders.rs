//! Property tests over every decoder: arbitrary input never panics and never allocates past
//! a frame's cap, and whatever the encoder writes reads back equal.
//! Run with `cargo test -p burrow-common --test decoders`.

use std::net::SocketAddr;

use burrow_common::{
    AgentMsg, Fingerprint, Granted, Hello, HttpAccess, JoinTicket, LinkOpening, PortRange, PublicName, Refusal, Secret,
    ServerMsg, StreamHeader, TunnelKind, TunnelSpec, Welcome,
    protocol::{FrameError, MAX_CONTROL_FRAME, MAX_HEADER_FRAME, read_msg, write_msg},
};
use proptest::{collection::vec, prelude::*};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime builds").block_on(future)
}

fn round_trip<T>(msg: &T, max: usize) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    block_on(async {
        let mut frame = Vec::new();
        write_msg(&mut frame, msg).await.expect("encoding into memory succeeds");
        read_msg(&mut frame.as_slice(), max).await.expect("what was written reads back")
    })
}

fn tunnel_kind() -> impl Strategy<Value = TunnelKind> {
    let public_name = || {
        proptest::option::of(prop_oneof![
            "[a-z0-9-]{1,63}".prop_map(PublicName::Subdomain),
            "[a-z0-9.-]{1,80}".prop_map(PublicName::Hostname),
        ])
    };
    let net = (any::<[u8; 4]>(), 0u8..=32)
        .prop_map(|(ip, prefix)| ipnet::IpNet::from(ipnet::Ipv4Net::new(ip.into(), prefix).expect("prefix <= 32")));
    let access = (proptest::option::of(".{0,30}"), vec(net.clone(), 0..3), vec(net, 0..3)).prop_map(
        |(basic_auth, allow, deny)| HttpAccess {
            basic_auth: basic_auth.map(Secret::new),
            allow,
            deny,
            upgrades: Vec::new(),
        },
    );
    prop_oneof![
        proptest::option::of(any::<u16>()).prop_map(|port| TunnelKind::Tcp { port }),
        (public_name(), access).prop_map(|(name, access)| TunnelKind::Http { name, access }),
        public_name().prop_map(|name| TunnelKind::Tls { name }),
    ]
}

fn tunnel_spec() -> impl Strategy<Value = TunnelSpec> {
    ("[a-z0-9._-]{1,64}", ".{0,40}", tunnel_kind()).prop_map(|(name, local, kind)| TunnelSpec { name, local, kind })
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        Just(Refusal::BadToken),
        (any::<u32>(), any::<u32>()).prop_map(|(agent, relay)| Refusal::Version { agent, relay }),
        any::<u16>().prop_map(|port| Refusal::PortTaken { port }),
        (any::<u16>(), ".{0,20}").prop_map(|(port, allowed)| Refusal::PortNotAllowed { port, allowed }),
        ".{0,20}".prop_map(|range| Refusal::NoFreePort { range }),
        (any::<usize>(), any::<usize>()).prop_map(|(asked, max)| Refusal::TooManyTunnels { asked, max }),
        (".{0,20}", ".{0,40}").prop_map(|(name, why)| Refusal::BadTunnel { name, why }),
        ".{0,20}".prop_map(|name| Refusal::TunnelActive { name }),
        Just(Refusal::NoDomain),
        ".{0,20}".prop_map(|name| Refusal::SubdomainTaken { name }),
        Just(Refusal::UnknownSession),
        any::<usize>().prop_map(|max| Refusal::LinkLimit { max }),
        (".{0,20}", ".{0,20}", ".{0,20}").prop_map(|(name, token, allowed)| Refusal::HostnameNotAllowed {
            name,
            token,
            allowed
        }),
        ".{0,20}".prop_map(|name| Refusal::HostnameTaken { name }),
    ]
}

fn granted() -> impl Strategy<Value = Granted> {
    (any::<u32>(), ".{0,20}", any::<u16>(), proptest::option::of(".{0,30}"), vec(".{0,40}", 0..3))
        .prop_map(|(id, name, port, host, urls)| Granted { id, name, port, host, urls })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in vec(any::<u8>(), 0..4096)) {
        block_on(async {
            let hello = read_msg::<_, LinkOpening>(&mut bytes.as_slice(), MAX_CONTROL_FRAME).await;
            let answer = read_msg::<_, ServerMsg>(&mut bytes.as_slice(), MAX_CONTROL_FRAME).await;
            let header = read_msg::<_, StreamHeader>(&mut bytes.as_slice(), MAX_HEADER_FRAME).await;
            let update = read_msg::<_, AgentMsg>(&mut bytes.as_slice(), MAX_CONTROL_FRAME).await;
            // Only the outcome matters here: an error is fine, a panic is not.
            drop((hello, answer, header, update));
        });
    }

    #[test]
    fn a_length_over_the_cap_is_refused_before_reading_the_body(
        len in (MAX_CONTROL_FRAME as u32 + 1)..=u32::MAX,
        tail in vec(any::<u8>(), 0..64),
    ) {
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend(tail);
        let err = block_on(read_msg::<_, Hello>(&mut frame.as_slice(), MAX_CONTROL_FRAME)).unwrap_err();
        prop_assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn hello_round_trips(version in any::<u32>(), token in ".{0,64}", tunnels in vec(tunnel_spec(), 0..8)) {
        let hello = LinkOpening::Hello(Hello { version, token: Secret::new(token), tunnels });
        prop_assert_eq!(round_trip(&hello, MAX_CONTROL_FRAME), hello);
    }

    #[test]
    fn joins_round_trip(ticket in any::<[u8; 32]>()) {
        let join = LinkOpening::Join { ticket: JoinTicket(ticket) };
        prop_assert_eq!(round_trip(&join, MAX_CONTROL_FRAME), join);
        prop_assert_eq!(round_trip(&ServerMsg::Joined, MAX_CONTROL_FRAME), ServerMsg::Joined);
    }

    #[test]
    fn answers_round_trip(tunnels in vec(granted(), 0..8), refused in refusal(), ticket in any::<[u8; 32]>()) {
        let welcome = ServerMsg::Welcome(Welcome { tunnels, ticket: JoinTicket(ticket), links: 4, fleet: Vec::new() });
        prop_assert_eq!(round_trip(&welcome, MAX_CONTROL_FRAME), welcome);
        let refused = ServerMsg::Refused(refused);
        prop_assert_eq!(round_trip(&refused, MAX_CONTROL_FRAME), refused);
    }

    #[test]
    fn updates_and_their_answers_round_trip(
        add in vec(tunnel_spec(), 0..6),
        remove in vec(any::<u32>(), 0..6),
        granted in vec(granted(), 0..6),
        refused in vec((".{0,20}", refusal()), 0..3),
    ) {
        let update = AgentMsg::Update { add, remove };
        prop_assert_eq!(round_trip(&update, MAX_CONTROL_FRAME), update);
        let answer = ServerMsg::Updated { granted, refused };
        prop_assert_eq!(round_trip(&answer, MAX_CONTROL_FRAME), answer);
    }

    #[test]
    fn stream_headers_round_trip(tunnel in any::<u32>(), visitor in any::<SocketAddr>()) {
        let read = round_trip(&StreamHeader::visitor(tunnel, visitor), MAX_HEADER_FRAME);
        prop_assert_eq!(read.tunnel, tunnel);
        prop_assert_eq!((read.visitor.ip(), read.visitor.port()), (visitor.ip(), visitor.port()));
    }

    #[test]
    fn port_ranges_parse_any_text_and_round_trip(text in ".{0,16}|[0-9]{1,5}-[0-9]{1,5}") {
        if let Ok(range) = text.parse::<PortRange>() {
            prop_assert!(range.start >= 1 && range.start <= range.end);
            prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
        }
    }

    #[test]
    fn fingerprints_parse_any_text_and_round_trip(text in ".{0,80}|(sha256:)?[0-9a-f]{64}") {
        if let Ok(fingerprint) = text.parse::<Fingerprint>() {
            prop_assert_eq!(fingerprint.to_string().parse::<Fingerprint>(), Ok(fingerprint));
        }
    }
}
