//! The `inspect` setting: `IP:PORT`, a bare `PORT` on 127.0.0.1, or `off`.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer, Serializer};

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Port(u16),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Port(port) => return Ok(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))),
        Raw::Text(text) => text,
    };
    if text == "off" {
        return Ok(None);
    }
    let parsed = match text.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        Err(_) => text.parse(),
    };
    parsed.map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid value {text:?}: expected IP:PORT or PORT, like 127.0.0.1:4040, or off"
        ))
    })
}

pub(crate) fn serialize<S: Serializer>(value: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("off"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Setting {
        #[serde(with = "super")]
        inspect: Option<SocketAddr>,
    }

    fn parse(value: &str) -> Result<Option<SocketAddr>, String> {
        serde_json::from_str::<Setting>(&format!("{{\"inspect\": {value}}}"))
            .map(|s| s.inspect)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_address_a_port_or_off() {
        assert_eq!(parse("\"off\""), Ok(None));
        assert_eq!(parse("4041"), Ok(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4041)))));
        assert_eq!(parse("\"4042\""), Ok(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4042)))));
        assert_eq!(parse("\"0.0.0.0:4040\""), Ok(Some(SocketAddr::from(([0, 0, 0, 0], 4040)))));
        assert!(parse("\"on\"").is_err_and(|e| e.contains("expected IP:PORT or PORT")));
    }
}
