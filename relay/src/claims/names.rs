//! Which name an HTTP or TLS tunnel may claim: the subdomain or custom hostname it asked for,
//! the subdomain reserved for it, or a fresh random subdomain, among the names its token
//! allows; and what it is told when it may not.

use std::sync::Arc;

use burrow_common::{PublicName, Refusal};
use rand::Rng;

use super::{
    Bound, ClaimError, Claimant, Place, Route,
    kinds::{Claim, closed_kind},
};
use crate::{Shared, tokens::Grant, vhost};

/// How many random names are tried before giving up; with tens of thousands of names and a
/// few hundred tunnels, one collision is already rare.
const RANDOM_NAME_ATTEMPTS: usize = 32;

/// Claims the name asked for (a subdomain, or a hostname: one under the relay's domain is
/// that subdomain), or without one a subdomain as [`claim_subdomain`] picks it.
pub(crate) async fn claim_name(
    shared: &Shared,
    who: &Claimant<'_>,
    grant: &Grant,
    requested: Option<&PublicName>,
    route: &Arc<Route>,
) -> Claim {
    let vhost = shared.vhost.as_ref().ok_or(Refusal::NoDomain)?;
    let asked = requested.map(|name| vhost.place_asked(name)).transpose().map_err(|e| bad_tunnel(who, &e))?;
    match asked {
        Some(Place::Hostname(host)) => claim_hostname(shared, who, grant, host, route).await,
        Some(Place::Subdomain(label)) => claim_subdomain(shared, who, grant, Some(&label), route).await,
        _ => claim_subdomain(shared, who, grant, None, route).await,
    }
}

/// Claims the custom hostname `host` (valid, lowercase, outside the relay's domain) if the
/// token lists it.
async fn claim_hostname(shared: &Shared, who: &Claimant<'_>, grant: &Grant, host: String, route: &Arc<Route>) -> Claim {
    shared.claims.within_limit(who.key)?;
    if !grant.allows_hostname(&host) {
        let allowed = grant.describe_hostnames();
        return Err(Refusal::HostnameNotAllowed { name: host, token: grant.name.clone(), allowed }.into());
    }
    let place = Place::Hostname(host.clone());
    let claimed = shared.claims.try_place(shared.store.as_ref(), who, &place, route, |_| Bound::NotNeeded).await?;
    claimed.ok_or(Refusal::HostnameTaken { name: host }.into())
}

/// Claims the subdomain asked for, the one reserved for the tunnel, or a fresh random one,
/// among the names the token may use.
async fn claim_subdomain(
    shared: &Shared,
    who: &Claimant<'_>,
    grant: &Grant,
    requested: Option<&str>,
    route: &Arc<Route>,
) -> Claim {
    if grant.subdomains.as_ref().is_some_and(Vec::is_empty) {
        return Err(closed_kind(who, "HTTP or TLS", "subdomains").into());
    }
    let reserved_names = shared.config().reserved_names.clone();
    shared.claims.within_limit(who.key)?;
    let name = match requested {
        Some(asked) => {
            let name = vhost::check_subdomain(asked, &reserved_names).map_err(|e| bad_tunnel(who, &e))?;
            if !grant.allows_subdomain(&name) {
                return Err(Refusal::SubdomainNotAllowed { name, allowed: grant.describe_subdomains() }.into());
            }
            name
        }
        None => match shared.store.reserved_for(who.key).await {
            Ok(Some(Place::Subdomain(name))) if grant.allows_subdomain(&name) => name,
            _ => return claim_random_subdomain(shared, who, grant, &reserved_names, route).await,
        },
    };
    let place = Place::Subdomain(name.clone());
    let claimed = shared.claims.try_place(shared.store.as_ref(), who, &place, route, |_| Bound::NotNeeded).await?;
    claimed.ok_or(Refusal::SubdomainTaken { name }.into())
}

fn bad_tunnel(who: &Claimant<'_>, why: &vhost::NameError) -> ClaimError<Route> {
    Refusal::BadTunnel { name: who.key.tunnel.clone(), why: why.to_string() }.into()
}

async fn claim_random_subdomain(
    shared: &Shared,
    who: &Claimant<'_>,
    grant: &Grant,
    reserved_names: &[String],
    route: &Arc<Route>,
) -> Claim {
    let refused = |why: String| Refusal::BadTunnel { name: who.key.tunnel.clone(), why };
    for _ in 0..RANDOM_NAME_ATTEMPTS {
        let name = match random_name_for(grant) {
            RandomName::Drawn(name) => name,
            RandomName::Unfit => continue,
            RandomName::NotAllowed => {
                let allowed = grant.describe_subdomains();
                return Err(refused(format!("this token may use only the subdomains {allowed}: ask for one")).into());
            }
        };
        let place = Place::Subdomain(name.clone());
        if reserved_names.contains(&name) || shared.claims.is_held(&place) || owned(shared, &place).await {
            continue;
        }
        let store = shared.store.as_ref();
        if let Some(claimed) = shared.claims.try_place(store, who, &place, route, |_| Bound::NotNeeded).await? {
            return Ok(claimed);
        }
    }
    Err(refused("no unused random subdomain was found; ask for a name of your own".into()).into())
}

enum RandomName {
    Drawn(String),
    /// The draw does not fit its pattern (too long a label): draw again.
    Unfit,
    /// The token's patterns have no `*`: no name can be drawn for it.
    NotAllowed,
}

/// A random name the token may use: any, or one of its patterns with a random `*`.
fn random_name_for(grant: &Grant) -> RandomName {
    let Some(patterns) = &grant.subdomains else { return RandomName::Drawn(vhost::random_subdomain()) };
    let wildcards: Vec<_> = patterns.iter().filter(|p| p.is_wildcard()).collect();
    if wildcards.is_empty() {
        return RandomName::NotAllowed;
    }
    let pattern = wildcards[rand::rng().random_range(0..wildcards.len())];
    pattern.fill(&vhost::random_subdomain()).map_or(RandomName::Unfit, RandomName::Drawn)
}

async fn owned(shared: &Shared, place: &Place) -> bool {
    matches!(shared.store.owner_of(place).await, Ok(Some(_)))
}
