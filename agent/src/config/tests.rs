//! The config's parsing and its errors, as a user meets them.

use super::*;

#[derive(Serialize)]
struct NoFlags {}

#[test]
fn addresses_parse() {
    let local = |s: &str| s.parse::<LocalTarget>().map(|t| t.to_string());
    assert_eq!(local("8080"), Ok("127.0.0.1:8080".into()));
    assert_eq!(local("localhost:3000"), Ok("localhost:3000".into()));
    assert_eq!(local("[::1]:22"), Ok("[::1]:22".into()));
    assert!(local("host:").unwrap_err().contains("expected PORT or HOST:PORT"));
    assert!(local("0").is_err());

    let relay = |s: &str| s.parse::<RelayAddr>().map(|t| t.to_string());
    assert_eq!(relay("relay.example.com"), Ok("relay.example.com:4443".into()));
    assert_eq!(relay("127.0.0.1:5000"), Ok("127.0.0.1:5000".into()));
    assert_eq!(relay("::1"), Ok("[::1]:4443".into()));
    assert_eq!(relay("[::1]:7"), Ok("[::1]:7".into()));
    assert!(relay("http://x").unwrap_err().contains("expected HOST or HOST:PORT"));
}

proptest::proptest! {
    #[test]
    fn addresses_parse_any_text_and_round_trip(text in ".{0,40}|[a-z0-9.-]{1,20}:[0-9]{1,5}|\\[[0-9a-f:]{2,20}\\]:[0-9]{1,5}") {
        if let Ok(local) = text.parse::<LocalTarget>() {
            proptest::prop_assert_eq!(local.to_string().parse::<LocalTarget>(), Ok(local));
        }
        if let Ok(relay) = text.parse::<RelayAddr>() {
            proptest::prop_assert_eq!(relay.to_string().parse::<RelayAddr>(), Ok(relay));
        }
    }
}

#[test]
fn deploy_example_parses() -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let config = AgentConfig::load(Some(&path), &NoFlags {})?;
    assert_eq!(config.relay, Some("relay.example.com".parse().map_err(anyhow::Error::msg)?));
    assert_eq!(config.tunnels.len(), 3);
    assert_eq!(config.tunnels[2].protocol, Protocol::Http);
    assert_eq!(config.tunnels[1].name(), "ssh");
    assert_eq!(config.inspect, Some("127.0.0.1:4040".parse()?));
    Ok(())
}

#[test]
fn bad_values_name_key_value_and_form() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    for (text, words) in [
        ("fingerprint = \"sha256:12\"", ["fingerprint", "sha256:12", "64 hex digits"]),
        ("relay = \"a b\"", ["relay", "\"a b\"", "HOST:PORT"]),
        ("keep_alive = \"often\"", ["keep_alive", "often", "30s"]),
        ("keep_alive = \"40s\"", ["keep_alive = 40s", "shorter than", "idle_timeout = 30s"]),
        ("token = \"short\"", ["token is 5 characters long", "at least 16", "relay token add"]),
        ("[[tunnels]]\nlocal = \"x:y\"", ["tunnels", "x:y", "HOST:PORT"]),
        ("[[tunnels]]\nlocal = 80\nremote = 1", ["unknown field `remote`", "remote_port", "tunnels"]),
        ("inspect = \"on\"", ["inspect", "\"on\"", "or off"]),
        ("links = 0", ["links = 0", "out of range", "1 to 8"]),
        ("links = 9", ["links = 9", "out of range", "1 to 8"]),
        ("inspect = \"0.0.0.0:4040\"", ["inspect = 0.0.0.0:4040", "beyond this machine", "inspect_token"]),
        ("inspect_token = \"short\"", ["inspect_token", "5 characters", "at least 16"]),
        ("log_format = \"xml\"", ["log_format", "xml", "json"]),
        ("proxy = \"ftp://al:hunter2@x\"", ["proxy", "ftp://al:***@x", "socks5h://"]),
        ("[[tunnels]]\nlocal = 80\nprotocol = \"ftp\"", ["protocol \"ftp\"", "http", "tls or udp"]),
        ("[[tunnels]]\nlocal = 80\nbasic_auth = \"a:b\"", ["tcp-80", "basic_auth", "HTTP tunnels only"]),
        ("[[tunnels]]\nlocal = 80\nupgrades = [\"h2c\"]", ["tcp-80", "upgrades", "HTTP tunnels only"]),
        (
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nupgrades = [\"h2 c\"]",
            ["http-80", "upgrades", "not a protocol name"],
        ),
        (
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nbasic_auth = \"nocolon\"",
            ["http-80", "basic_auth", "USER:PASSWORD"],
        ),
        ("[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nallow = [\"10.0.0/8\"]", ["allow", "10.0.0/8", "CIDR range"]),
        (
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nremote_port = 20000",
            ["http-80", "remote_port", "TCP and UDP tunnels only"],
        ),
        ("[[tunnels]]\nlocal = 80\ntcp_idle_timeout = \"soon\"", ["tcp_idle_timeout", "soon", "or off"]),
        ("[[tunnels]]\nlocal = 80\ntcp_idle_timeout = \"5ms\"", ["tcp_idle_timeout", "5ms", "at least 1s"]),
        (
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\ntcp_idle_timeout = \"5m\"",
            ["http-80", "tcp_idle_timeout", "TCP and TLS tunnels only"],
        ),
        (
            "[[tunnels]]\nlocal = 51820\nprotocol = \"udp\"\ntcp_idle_timeout = \"5m\"",
            ["udp-51820", "tcp_idle_timeout", "TCP and TLS tunnels only"],
        ),
        (
            "[[tunnels]]\nlocal = 51820\nprotocol = \"udp\"\nsubdomain = \"vpn\"",
            ["vpn", "subdomain", "HTTP and TLS tunnels only"],
        ),
        (
            "[[tunnels]]\nlocal = 80\nhostname = \"app.example.org\"",
            ["app.example.org", "hostname", "HTTP and TLS tunnels only"],
        ),
        (
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nhostname = \"localhost\"",
            ["localhost", "hostname = \"localhost\"", "full DNS name, like app.example.org"],
        ),
        (
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nsubdomain = \"app\"\nhostname = \"app.example.org\"",
            ["app", "hostname", "either subdomain or hostname, not both"],
        ),
        ("[[tunnels]]\nlocal = 53\nflow_idle = \"2m\"", ["tcp-53", "flow_idle", "UDP tunnels only"]),
        (
            "[[tunnels]]\nlocal = 53\nprotocol = \"udp\"\nflow_idle = \"500ms\"",
            ["udp-53", "flow_idle = 500ms", "1s to 1h"],
        ),
        ("[[tunnels]]\nlocal = 53\nprotocol = \"udp\"\nflow_idle = \"2h\"", ["udp-53", "flow_idle = 2h", "1s to 1h"]),
        ("[[tunnels]]\nlocal = 53\nprotocol = \"udp\"\nflow_idle = \"off\"", ["flow_idle", "off", "5m"]),
    ] {
        std::fs::write(&path, text)?;
        let err = format!("{:#}", AgentConfig::load(Some(&path), &NoFlags {}).unwrap_err());
        for word in words {
            assert!(err.contains(word), "{text}: {err} lacks {word}");
        }
    }
    Ok(())
}

#[test]
fn a_udp_tunnel_takes_a_port_and_a_flow_idle_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    let text = "[[tunnels]]\nlocal = 51820\nprotocol = \"udp\"\nremote_port = 21422\nflow_idle = \"90s\"\n\n\
                [[tunnels]]\nlocal = \"127.0.0.1:53\"\nprotocol = \"UDP\"";
    std::fs::write(&path, text)?;
    let config = AgentConfig::load(Some(&path), &NoFlags {})?;
    let (wireguard, dns) = (&config.tunnels[0], &config.tunnels[1]);
    assert_eq!(
        (wireguard.protocol, wireguard.name(), wireguard.remote_port),
        (Protocol::Udp, "udp-51820".into(), Some(21422))
    );
    assert_eq!(wireguard.flow_idle, Some(Duration::from_secs(90)));
    assert_eq!((dns.name(), dns.flow_idle), ("udp-53".into(), None), "unset: the relay's default");
    Ok(())
}

#[test]
fn an_http_or_tls_tunnel_takes_a_hostname() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("agent.toml");
    let text = "[[tunnels]]\nlocal = 3000\nprotocol = \"http\"\nhostname = \"app.example.org\"\n\n\
                [[tunnels]]\nlocal = 8443\nprotocol = \"tls\"\nname = \"secure\"\nhostname = \"secure.example.org\"";
    std::fs::write(&path, text)?;
    let config = AgentConfig::load(Some(&path), &NoFlags {})?;
    let (web, secure) = (&config.tunnels[0], &config.tunnels[1]);
    assert_eq!(web.name(), "app.example.org", "named after its hostname");
    assert_eq!(web.public_name(), Some(PublicName::Hostname("app.example.org".into())));
    assert_eq!(
        (secure.name(), secure.public_name()),
        ("secure".into(), Some(PublicName::Hostname("secure.example.org".into())))
    );
    Ok(())
}
