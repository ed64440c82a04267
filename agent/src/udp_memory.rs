//! Relays whose UDP was blocked when this agent last reached them: the next start offers
//! TLS over TCP at once instead of giving QUIC its head start first. Kept in the user's cache
//! directory (`$XDG_CACHE_HOME/burrow/udp-blocked`), one `HOST:PORT` per line; losing it
//! only costs the head start once.

use std::path::PathBuf;

use crate::config::RelayAddr;

fn file() -> Option<PathBuf> {
    dirs::cache_dir().map(|dir| dir.join("burrow").join("udp-blocked"))
}

fn read() -> Vec<String> {
    let Some(path) = file() else { return Vec::new() };
    std::fs::read_to_string(path).map(|text| text.lines().map(str::to_string).collect()).unwrap_or_default()
}

pub(crate) fn blocked(relay: &RelayAddr) -> bool {
    let relay = relay.to_string();
    read().contains(&relay)
}

/// Records whether `relay`'s UDP was blocked; a failure to record is only logged.
pub(crate) fn remember(relay: &RelayAddr, was_blocked: bool) {
    let relay = relay.to_string();
    let mut lines = read();
    if lines.contains(&relay) == was_blocked {
        return;
    }
    lines.retain(|line| *line != relay);
    if was_blocked {
        lines.push(relay);
    }
    let Some(path) = file() else { return };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, lines.iter().map(|line| format!("{line}\n")).collect::<String>()));
    if let Err(e) = written {
        tracing::debug!("cannot record in {} that UDP is blocked: {e}", path.display());
    }
}
