//! Certificates from a real ACME CA (Pebble, started by each test on loopback), through the
//! compiled relay and agent, checked by curl trusting only the CA's root. `scripts/test`
//! installs Pebble; where it is missing and not required, each test says it is skipped. The
//! fleet tests (two relays on one etcd) are built with the `etcd` feature, as `scripts/test`
//! does: `cargo test -p burrow-relay --features etcd --test acme fleet`.

mod acme_support;

use std::time::Duration;

use anyhow::Context;

use acme_support::{Acme, WEB_PAGE, curl_https};

#[tokio::test]
async fn a_tunnel_name_gets_a_certificate_through_tls_alpn_01_and_unknown_names_none() -> anyhow::Result<()> {
    let Some(acme) = Acme::start("tls-alpn-01", None).await? else { return Ok(()) };
    // The domain's own certificate is ordered at start.
    acme.wait_valid("burrow.test").await?;
    let _agent = acme.agent("myapp").await?;
    let body = curl_https(&acme, "myapp.burrow.test").await?;
    assert_eq!(body, WEB_PAGE, "the page arrives byte for byte, over a certificate curl trusts");
    let orders = acme.orders()?;
    assert_eq!(orders, 2, "the domain and myapp:\n{}", acme.logs());

    for name in ["nosuch.burrow.test", "www.burrow.test", "a.b.burrow.test", "example.org"] {
        let refused = curl_https(&acme, name).await.expect_err("a name no tunnel holds gets the fallback");
        assert!(refused.to_string().contains("certificate"), "{name}: {refused:#}");
    }
    assert_eq!(acme.orders()?, orders, "unknown names never cause an order");

    let metrics = acme.relay()?.metrics().await?;
    let expiry =
        testkit::admin::sample(&metrics, "burrow_certificate_expiry_timestamp_seconds{name=\"myapp.burrow.test\"}");
    assert!(expiry.is_some_and(|at| at > 0.0), "{metrics}");
    assert_eq!(testkit::admin::sample(&metrics, "burrow_acme_orders_total{result=\"issued\"}"), Some(2.0), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_tunnel_name_gets_a_certificate_through_http_01() -> anyhow::Result<()> {
    let Some(acme) = Acme::start("http-01", None).await? else { return Ok(()) };
    let _agent = acme.agent("webhooks").await?;
    assert_eq!(curl_https(&acme, "webhooks.burrow.test").await?, WEB_PAGE);
    let certificates = acme.certificates().await?;
    let entry = certificates.iter().find(|c| c["names"][0] == "webhooks.burrow.test").expect("listed");
    assert_eq!((entry["challenge"].as_str(), entry["state"].as_str()), (Some("http-01"), Some("valid")), "{entry}");
    Ok(())
}

#[tokio::test]
async fn one_wildcard_through_a_dns_01_hook_covers_every_tunnel() -> anyhow::Result<()> {
    let Some(acme) = Acme::start("dns-01", None).await? else { return Ok(()) };
    acme.wait_valid("*.burrow.test").await?;
    let _first = acme.agent("first").await?;
    let _second = acme.agent("second").await?;
    assert_eq!(curl_https(&acme, "first.burrow.test").await?, WEB_PAGE);
    assert_eq!(curl_https(&acme, "second.burrow.test").await?, WEB_PAGE);
    assert_eq!(acme.orders()?, 1, "one wildcard order for all:\n{}", acme.logs());
    Ok(())
}

#[tokio::test]
async fn a_restarted_relay_serves_its_stored_certificates_without_a_new_order() -> anyhow::Result<()> {
    let Some(mut acme) = Acme::start("tls-alpn-01", None).await? else { return Ok(()) };
    let agent = acme.agent("myapp").await?;
    assert_eq!(curl_https(&acme, "myapp.burrow.test").await?, WEB_PAGE);
    acme.wait_valid("burrow.test").await?;
    let orders = acme.orders()?;
    drop(agent);

    acme.restart_relay().await?;
    let _agent = acme.agent("myapp").await?;
    assert_eq!(curl_https(&acme, "myapp.burrow.test").await?, WEB_PAGE);
    assert_eq!(acme.orders()?, orders, "nothing ordered again:\n{}", acme.logs());
    Ok(())
}

#[tokio::test]
async fn a_short_lived_certificate_is_renewed_under_load_without_losing_a_request() -> anyhow::Result<()> {
    // Renewal falls two thirds into the 30 s life: about 20 s after issuance.
    let Some(acme) = Acme::start("tls-alpn-01", Some(Duration::from_secs(30))).await? else { return Ok(()) };
    let _agent = acme.agent("myapp").await?;
    let load = acme_support::Load::start(&acme, "myapp.burrow.test", 2)?;
    let first = load.next_serial_other_than(None, Duration::from_secs(20)).await?;
    let renewed = load.next_serial_other_than(Some(&first), Duration::from_secs(40)).await;
    let renewed = renewed.with_context(|| acme.logs())?;
    let served = load.stop().await?;
    assert_ne!(first, renewed);
    assert!(served.ok >= 20, "the load ran: {served:?}");
    assert_eq!(served.failed, Vec::<String>::new(), "{} requests went through", served.ok);
    println!("{} HTTPS requests on new connections across the renewal, none failed", served.ok);
    Ok(())
}

#[tokio::test]
async fn a_name_no_tunnel_keeps_is_not_renewed_but_forgotten() -> anyhow::Result<()> {
    let settings = "reservation_ttl = \"1s\"";
    let Some(acme) = Acme::start_with("tls-alpn-01", Some(Duration::from_secs(30)), settings).await? else {
        return Ok(());
    };
    let agent = acme.agent("brief").await?;
    assert_eq!(curl_https(&acme, "brief.burrow.test").await?, WEB_PAGE);
    acme.wait_valid("burrow.test").await?;
    let orders = acme.orders()?;
    agent.process.terminate().await?;
    // Renewal falls due about 20 s after issuance; the name's reservation ended long before.
    let forgotten = async {
        let mut pace = tokio::time::interval(Duration::from_millis(200));
        while acme.certificates().await?.iter().any(|c| c["names"][0] == "brief.burrow.test") {
            pace.tick().await;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(40), forgotten).await.context("never forgotten")??;
    // The domain's own certificate is renewed meanwhile; the tunnel's is not.
    acme.wait_state("burrow.test", "valid", Duration::from_secs(5)).await?;
    let renewals = acme.orders()? - orders;
    assert!(renewals <= 2, "only the domain's certificate was renewed: {renewals} orders\n{}", acme.logs());
    Ok(())
}

#[tokio::test]
async fn a_failed_renewal_keeps_serving_the_current_certificate() -> anyhow::Result<()> {
    let Some(mut acme) = Acme::start("tls-alpn-01", Some(Duration::from_secs(30))).await? else { return Ok(()) };
    let _agent = acme.agent("myapp").await?;
    assert_eq!(curl_https(&acme, "myapp.burrow.test").await?, WEB_PAGE);
    // The CA goes away before the renewal falls due.
    acme.stop_pebble();
    let failed = acme.wait_state("myapp.burrow.test", "failed", Duration::from_secs(40)).await?;
    let error = failed["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(!error.is_empty(), "{failed}");
    assert_eq!(curl_https(&acme, "myapp.burrow.test").await?, WEB_PAGE, "still served after: {error}");
    Ok(())
}

#[tokio::test]
async fn a_custom_hostname_allowed_to_the_token_gets_its_certificate_and_another_is_refused() -> anyhow::Result<()> {
    let Some(acme) = Acme::start("tls-alpn-01", None).await? else { return Ok(()) };
    acme.wait_valid("burrow.test").await?;
    let token = acme.add_token("team", "app.example.org").await?;
    let _agent = acme.agent_with(&token, "app.example.org").await?;
    assert_eq!(curl_https(&acme, "app.example.org").await?, WEB_PAGE, "the CNAME'd name, trusted");

    let Err(refused) = acme.agent_with(&token, "other.example.org").await else {
        anyhow::bail!("the relay granted a hostname the token lacks")
    };
    assert!(format!("{refused:#}").contains("outside the hostnames token \"team\" allows"), "{refused:#}");
    let orders = acme.orders()?;
    assert!(curl_https(&acme, "other.example.org").await.is_err(), "no certificate for a refused name");
    assert_eq!(acme.orders()?, orders, "and no order:\n{}", acme.logs());
    Ok(())
}

/// Two relays of a fleet, the CA's checks reaching only one of them: the other orders, and
/// the one the check reaches answers from the fleet's store; then the first relay serves the
/// certificate the other ordered, without an order of its own. One order per name in all.
#[cfg(feature = "etcd")]
mod fleet {
    use super::{
        WEB_PAGE,
        acme_support::fleet::{AcmeFleet, CHECKED, UNCHECKED},
    };

    async fn one_order_per_name_and_any_relay_answers_the_check(challenge: &str) -> anyhow::Result<()> {
        let Some(fleet) = AcmeFleet::start(challenge).await? else { return Ok(()) };
        for ip in [CHECKED, UNCHECKED] {
            fleet.wait_valid(ip, "burrow.test").await?;
        }
        let _agent = fleet.agent("app").await?;
        assert_eq!(fleet.curl_https(UNCHECKED, "app.burrow.test").await?, WEB_PAGE);
        let entry = fleet.wait_valid(UNCHECKED, "app.burrow.test").await?;
        assert_eq!(entry["challenge"].as_str(), Some(challenge), "{entry}");

        fleet.agent_on_both().await?;
        assert_eq!(fleet.curl_https(CHECKED, "app.burrow.test").await?, WEB_PAGE);
        let orders = fleet.pebble.orders_created()?;
        assert_eq!(orders, 2, "burrow.test and app.burrow.test, once each for the fleet:\n{}", fleet.logs());
        let adopted = fleet.relay_at(CHECKED).process.stderr_text();
        assert!(adopted.contains("serving the certificate another relay of the fleet ordered"), "{}", fleet.logs());
        Ok(())
    }

    #[tokio::test]
    async fn http_01_in_a_fleet() -> anyhow::Result<()> {
        one_order_per_name_and_any_relay_answers_the_check("http-01").await
    }

    #[tokio::test]
    async fn tls_alpn_01_in_a_fleet() -> anyhow::Result<()> {
        one_order_per_name_and_any_relay_answers_the_check("tls-alpn-01").await
    }
}
