//! HTTP and HTTPS tunnels: one public HTTP port and one HTTPS port shared by every agent,
//! each request routed by its hostname to the tunnel that holds that subdomain.

mod certs;
mod names;
mod pages;
mod sni;
