//! Layered configuration: built-in defaults < TOML file < environment < command-line flags.
//!
//! Every config struct denies unknown fields and parses each value into its final type at
//! load, so a bad value stops start-up with the key, the value and the expected form.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

/// Where environment variables come from for one program.
pub struct EnvSource<'a> {
    /// e.g. `BURROW` reads `BURROW_TOKEN` as key `token`; `__` separates nested keys.
    pub prefix: &'a str,
    /// Variables under these longer prefixes belong to another program and are skipped.
    pub skip: &'a [&'a str],
    /// Keys whose value is a comma-separated list.
    pub list_keys: &'a [&'a str],
}

/// Why a layered configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// A value in one of the layers is malformed; the source names the key, the value and
    /// the expected form.
    #[error("invalid configuration ({origin})")]
    Invalid { origin: String, source: config::ConfigError },
    /// The command-line values could not be turned into a layer: a bug, not a user error.
    #[error("read the command-line flags")]
    Flags(#[source] config::ConfigError),
}

/// A value outside what its key accepts; the message names the key and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error(
        "invalid configuration: {key} is {len} characters long: expected at least {MIN_TOKEN_LEN} \
         (`relay token add NAME` makes a strong one)"
    )]
    ShortToken { key: &'static str, len: usize },
    #[error("invalid configuration: {key} = {value}: expected at least {min}")]
    BelowMinimum { key: &'static str, value: String, min: String },
    #[error("invalid configuration: {first} and {second} must be given together")]
    Unpaired { first: &'static str, second: &'static str },
    #[error("invalid configuration: {key} = {value}: expected {expected}")]
    Unexpected { key: &'static str, value: String, expected: &'static str },
}

/// Loads `T` from defaults, the optional TOML file, the environment and `flags` (highest).
pub fn load<T, F>(file: Option<&Path>, env: &EnvSource<'_>, flags: &F) -> Result<T, LoadError>
where
    T: DeserializeOwned,
    F: Serialize,
{
    let mut builder = Config::builder();
    if let Some(path) = file {
        if !path.exists() {
            return Err(LoadError::MissingFile(path.to_path_buf()));
        }
        builder = builder.add_source(File::from(path).format(FileFormat::Toml));
    }
    let vars = std::env::vars()
        .filter(|(k, _)| k.starts_with(&format!("{}_", env.prefix)))
        .filter(|(k, _)| !env.skip.iter().any(|s| k.starts_with(s)))
        .collect();
    let mut environment = Environment::with_prefix(env.prefix).prefix_separator("_").separator("__").source(Some(vars));
    if !env.list_keys.is_empty() {
        environment = environment.list_separator(",").try_parsing(false);
        for key in env.list_keys {
            environment = environment.with_list_parse_key(key);
        }
    }
    let layers = builder
        .add_source(environment)
        .add_source(Config::try_from(flags).map_err(LoadError::Flags)?)
        .build()
        .and_then(Config::try_deserialize::<T>);
    let origin = || match file {
        Some(path) => format!("{}, {}_* environment variables or flags", path.display(), env.prefix),
        None => format!("{}_* environment variables or flags", env.prefix),
    };
    layers.map_err(|source| LoadError::Invalid { origin: origin(), source })
}

/// A value that must never reach a log: Debug and Display print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Rejects tokens short enough to guess; `key` names the setting in the error.
    pub fn check_token(&self, key: &'static str) -> Result<(), SettingError> {
        let len = self.0.chars().count();
        if len < MIN_TOKEN_LEN {
            return Err(SettingError::ShortToken { key, len });
        }
        Ok(())
    }
}

/// Shortest token accepted anywhere; generated tokens are 47 characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// Checks that a duration setting is at least `min`, naming the key on failure.
pub fn check_duration(
    key: &'static str,
    value: std::time::Duration,
    min: std::time::Duration,
) -> Result<(), SettingError> {
    if value < min {
        return Err(SettingError::BelowMinimum { key, value: duration::format(value), min: duration::format(min) });
    }
    Ok(())
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An inclusive range of TCP ports, written `20000-29999` or `8080`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    pub fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end { write!(f, "{}", self.start) } else { write!(f, "{}-{}", self.start, self.end) }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid port range {s:?}: expected PORT or START-END like 20000-29999, ports 1-65535");
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?),
            None => {
                let p = port(s).ok_or_else(bad)?;
                (p, p)
            }
        };
        if start > end {
            return Err(bad());
        }
        Ok(PortRange { start, end })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Port(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Port(p) => p.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Writes port ranges as `parse_port_list` reads them, e.g. `22,8000-8100`.
pub fn format_port_list(ranges: &[PortRange]) -> String {
    ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Parses a comma-separated list of port ranges, e.g. `22,8000-8100`.
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, String> {
    s.split(',').map(str::parse).collect()
}

/// Serde adapters that parse through `FromStr` and name the expected form on failure.
pub mod parsed {
    use super::*;

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr + Expected,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom(format!("invalid value {s:?}: expected {}", T::EXPECTED)))
    }

    pub fn serialize<S: Serializer, T: fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// How a value of this type is written, for error messages.
    pub trait Expected {
        const EXPECTED: &'static str;
    }

    impl Expected for std::net::SocketAddr {
        const EXPECTED: &'static str = "IP:PORT, like 0.0.0.0:4443 or [::]:4443";
    }

    impl Expected for std::net::IpAddr {
        const EXPECTED: &'static str = "an IP address, like 0.0.0.0 or ::";
    }
}

/// Durations written with a unit: `30s`, `5m`, `24h`, `500ms`.
pub mod duration {
    use std::time::Duration;

    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format(*value))
    }

    /// Writes a duration the way users write them in config: `30s`, `1h 30m`.
    pub fn format(value: Duration) -> String {
        humantime::format_duration(value).to_string()
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|_| format!("invalid duration {s:?}: expected a number with a unit, like 500ms, 30s, 5m or 24h"))
    }
}

/// A duration as [`duration`] writes it, or `off` for none.
pub mod optional_duration {
    use std::time::Duration;

    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "off" {
            return Ok(None);
        }
        duration::parse(&s).map(Some).map_err(|e| serde::de::Error::custom(format!("{e}, or off")))
    }

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.collect_str(&duration::format(*value)),
            None => s.serialize_str("off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        ports: Option<PortRange>,
        #[serde(with = "duration")]
        wait: std::time::Duration,
        name: String,
    }

    #[derive(Serialize, Default)]
    struct NoFlags {}

    fn env<'a>() -> EnvSource<'a> {
        EnvSource { prefix: "BURROWTEST_NOPE", skip: &[], list_keys: &[] }
    }

    fn load_toml(text: &str) -> anyhow::Result<Sample> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sample.toml");
        std::fs::write(&path, text)?;
        Ok(load(Some(&path), &env(), &NoFlags::default())?)
    }

    /// The error as the binaries print it: every cause, outermost first.
    fn printed(result: anyhow::Result<Sample>) -> String {
        result.map_or_else(|e| format!("{e:#}"), |sample| format!("loaded {sample:?}"))
    }

    #[test]
    fn port_ranges_parse_and_reject_nonsense() {
        assert_eq!("20000-29999".parse(), Ok(PortRange { start: 20000, end: 29999 }));
        assert_eq!("8080".parse(), Ok(PortRange { start: 8080, end: 8080 }));
        for bad in ["", "0", "9-1", "1-70000", "a-b", "80-"] {
            let err = bad.parse::<PortRange>().unwrap_err();
            assert!(err.contains("expected PORT or START-END"), "{bad}: {err}");
        }
        assert_eq!(parse_port_list("22,8000-8100").unwrap().len(), 2);
    }

    #[test]
    fn file_values_and_errors_name_the_key() -> anyhow::Result<()> {
        let ok = load_toml("ports = \"1000-2000\"\nwait = \"5s\"\n")?;
        assert_eq!(ok.ports, Some(PortRange { start: 1000, end: 2000 }));
        assert_eq!(ok.wait, std::time::Duration::from_secs(5));

        let err = printed(load_toml("wait = \"soon\"\n"));
        assert!(err.contains("wait") && err.contains("\"soon\"") && err.contains("like 500ms"), "{err}");
        let err = printed(load_toml("ports = \"1-x\"\n"));
        assert!(err.contains("ports") && err.contains("START-END"), "{err}");
        let err = printed(load_toml("nmae = \"x\"\n"));
        assert!(err.contains("unknown field `nmae`"), "{err}");
        Ok(())
    }

    #[test]
    fn flags_override_file() -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Flags {
            name: &'static str,
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sample.toml");
        std::fs::write(&path, "name = \"file\"\n")?;
        let s: Sample = load(Some(&path), &env(), &Flags { name: "flag" })?;
        assert_eq!(s.name, "flag");
        Ok(())
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
    }
}
