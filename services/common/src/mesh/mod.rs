//! The trust boundary behind the gateway. Every internal gRPC connection is mutual TLS between
//! holders of certificates from one CA (one per ChatSystem); a certificate names the chatmesh
//! services its holder runs (URI SANs `spiffe://chatmesh.io/service/<name>`), and one table
//! ([`authz`]) says which service may call which RPC. A request's `user_id` is trusted only
//! because the peer proved it is the service allowed to send it. Without certificates (the
//! standalone binary) the internal ports stay on loopback instead.

pub mod authz;
pub mod tls;

use std::net::SocketAddr;

/// URI SAN prefix naming a chatmesh service in a certificate.
pub const IDENTITY_PREFIX: &str = "spiffe://chatmesh.io/service/";

/// A chatmesh service, as named in certificates and in the authorization table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Gateway,
    User,
    Friend,
    File,
    Message,
    Transmit,
    Speech,
}

impl Service {
    pub const ALL: [Service; 7] = [
        Service::Gateway,
        Service::User,
        Service::Friend,
        Service::File,
        Service::Message,
        Service::Transmit,
        Service::Speech,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::User => "user",
            Service::Friend => "friend",
            Service::File => "file",
            Service::Message => "message",
            Service::Transmit => "transmit",
            Service::Speech => "speech",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The URI SAN that names this service in a certificate.
    pub fn identity_uri(self) -> String {
        format!("{IDENTITY_PREFIX}{}", self.name())
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The other end of an internal connection, as its certificate proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    /// The services the certificate names (empty: a valid certificate that names none).
    pub services: Vec<Service>,
}

impl Peer {
    pub fn is(&self, service: Service) -> bool {
        self.services.contains(&service)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.services.iter().map(|s| s.name()).collect();
        let names = if names.is_empty() { "no chatmesh service".to_string() } else { names.join("+") };
        match self.addr {
            Some(addr) => write!(f, "{names} at {addr}"),
            None => f.write_str(&names),
        }
    }
}

/// The proven peer of a gRPC request: `None` when the mesh is off (plaintext on loopback,
/// where the deployment is the trust boundary).
pub fn peer<T>(request: &tonic::Request<T>) -> Option<&Peer> {
    request.extensions().get::<Peer>()
}
