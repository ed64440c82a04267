use std::sync::{Arc, Barrier};

use super::*;

fn ports(text: &str) -> anyhow::Result<Vec<PortRange>> {
    burrow_common::config::parse_port_list(text).map_err(anyhow::Error::msg)
}

#[test]
fn add_verify_revoke() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = TokenStore::open(dir.path());
    assert!(store.is_empty()?);
    let ranges = ports("8000-8100")?;
    let alice = store.add("alice", Limits { ports: Some(&ranges), ..Limits::default() })?;
    assert!(store.add("alice", Limits::default()).is_err());
    let grant = store.verify(&alice)?.expect("alice's token is valid");
    assert_eq!(
        grant,
        Grant {
            id: token_id(&hash(&alice)),
            name: "alice".into(),
            ports: Some(ranges),
            subdomains: None,
            hostnames: Vec::new()
        }
    );
    assert_eq!(grant.id.len(), 16, "8 bytes in hex");
    assert!(grant.allows(8050) && !grant.allows(20000));
    assert_eq!(store.verify(&Secret::new("brw_wrong"))?, None);

    let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE))?;
    assert!(!text.contains(alice.expose()), "the file must hold only hashes");

    // A second handle sees the revocation, as a running relay sees `relay token revoke`.
    let other = TokenStore::open(dir.path());
    assert!(other.revoke("alice")?);
    assert_eq!(store.verify(&alice)?, None);
    Ok(())
}

#[test]
fn a_token_added_again_under_a_name_gets_another_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = TokenStore::open(dir.path());
    let first = store.verify(&store.add("team", Limits::default())?)?.expect("valid");
    store.revoke("team")?;
    let second = store.verify(&store.add("team", Limits::default())?)?.expect("valid");
    assert_eq!(first.name, second.name);
    assert_ne!(first.id, second.id);
    Ok(())
}

#[test]
fn patterns_match_and_switches_close_a_kind() -> anyhow::Result<()> {
    let grant = |subdomains: Option<&str>, ports: Option<&str>| -> anyhow::Result<Grant> {
        let ports = match ports {
            Some(NONE) => Some(Vec::new()),
            Some(text) => Some(self::ports(text)?),
            None => None,
        };
        let subdomains = subdomains.map(parse_list).transpose()?;
        Ok(Grant { id: "0".into(), name: "t".into(), ports, subdomains, hostnames: Vec::new() })
    };
    let limited = grant(Some("app-*,docs,*-staging"), None)?;
    for allowed in ["app-1", "app-brave-otter", "docs", "web-staging"] {
        assert!(limited.allows_subdomain(allowed), "{allowed}");
    }
    for refused in ["app-", "app", "docs2", "mydocs", "staging", "-staging", "other"] {
        assert!(!limited.allows_subdomain(refused), "{refused}");
    }
    assert_eq!(limited.describe_subdomains(), "app-*,docs,*-staging");
    assert!(limited.allows(20000), "no port limit");

    let closed = grant(Some("none"), Some("none"))?;
    assert!(!closed.allows_subdomain("docs") && !closed.allows(20000));
    assert_eq!(closed.describe_subdomains(), "none");
    assert_eq!(closed.describe_ports("20000-20010".parse().map_err(anyhow::Error::msg)?), "none");
    assert!(grant(None, None)?.allows_subdomain("anything"));
    assert_eq!(grant(None, None)?.describe_subdomains(), "all");

    for bad in ["a*b*", "*.example", "-app*", "app_*", "", "app-*-"] {
        assert!(bad.parse::<NamePattern>().is_err(), "{bad:?}");
    }
    assert_eq!("APP-*".parse::<NamePattern>()?.to_string(), "app-*");
    Ok(())
}

#[test]
fn hostnames_are_stored_with_the_token_and_none_by_default() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = TokenStore::open(dir.path());
    let hostnames = parse_list::<HostPattern>("app.example.org,*.dev.example.org")?;
    let custom = store.verify(&store.add("custom", Limits { hostnames: &hostnames, ..Limits::default() })?)?;
    let custom = custom.expect("valid");
    assert!(custom.allows_hostname("app.example.org") && custom.allows_hostname("pr-7.dev.example.org"));
    assert!(!custom.allows_hostname("other.example.org") && !custom.allows_hostname("dev.example.org"));
    assert_eq!(custom.describe_hostnames(), "app.example.org,*.dev.example.org");

    let plain = store.verify(&store.add("plain", Limits::default())?)?.expect("valid");
    assert!(!plain.allows_hostname("app.example.org"), "no custom hostname unless listed");
    assert_eq!(plain.describe_hostnames(), "none");
    assert!(!Grant::unlimited(&[0; 32], "configured").allows_hostname("app.example.org"));

    // A token without hostnames is written as before, so the file stays readable by a relay
    // that knows no hostnames.
    let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE))?;
    assert_eq!(text.matches("\"hostnames\"").count(), 1, "{text}");
    Ok(())
}

/// Many `relay token add` at once with one `revoke`: each reads the file, changes it and
/// writes it back, so an add that read the file before the revoke wrote it would write the
/// revoked token back. Without the lock this fails almost always, though not
/// deterministically: it depends on how the threads interleave.
#[test]
fn concurrent_adds_never_undo_a_revoke() -> anyhow::Result<()> {
    const THREADS: usize = 8;
    const ADDS: usize = 25;
    let dir = tempfile::tempdir()?;
    TokenStore::open(dir.path()).add("victim", Limits::default())?;
    let start = Arc::new(Barrier::new(THREADS + 1));
    let adders: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (path, start) = (dir.path().to_path_buf(), start.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let store = TokenStore::open(&path);
                start.wait();
                for i in 0..ADDS {
                    store.add(&format!("t{thread}-{i}"), Limits::default())?;
                }
                Ok(())
            })
        })
        .collect();
    start.wait();
    let revoked = TokenStore::open(dir.path()).revoke("victim");
    let added: Vec<anyhow::Result<()>> =
        adders.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))).collect();
    let names: Vec<String> = TokenStore::open(dir.path()).list()?.into_iter().map(|t| t.name).collect();
    assert!(!names.contains(&"victim".to_string()), "an add wrote the revoked token back");
    assert!(revoked?, "the victim existed");
    for result in added {
        result?;
    }
    assert_eq!(names.len(), THREADS * ADDS, "every add lasts");
    Ok(())
}
