//! The collector's gRPC edge: the only place in the collector that touches
//! generated protobuf types. [`agent`] serves `AgentGateway`, [`specialist`]
//! serves `Specialist`; both read the caller's identity from the verified
//! connection, never from a message. [`enrollment`] serves `Enrollment`,
//! the one service for clients without a fleet certificate.

pub mod agent;
pub mod bounds;
pub mod enrollment;
pub mod refusals;
pub mod specialist;

use tonic::{Request, Status};

use crate::tls::ConnInfo;

/// The verified connection a request came on: its peer's identity and
/// certificate, as established at the TLS handshake.
fn conn<T>(request: &Request<T>) -> Result<&ConnInfo, Status> {
    request
        .extensions()
        .get::<ConnInfo>()
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}

impl From<crate::enrollment::Issued> for vitals_proto::wire::IssuedCertificate {
    fn from(i: crate::enrollment::Issued) -> Self {
        vitals_proto::wire::IssuedCertificate {
            endpoint_id: i.endpoint_id,
            certificate_pem: i.cert_pem,
            trust_bundle_pem: i.trust_bundle_pem,
            not_after_ms: i.not_after_ms,
            site: i.site,
            tags: i.tags,
        }
    }
}
