//! The collector's gRPC edge: the only place in the collector that touches
//! generated protobuf types. [`agent`] serves `AgentGateway`, [`specialist`]
//! serves `Specialist`; both read the caller's identity from the verified
//! connection, never from a message.

pub mod agent;
pub mod specialist;

use tonic::{Request, Status};
use vitals_proto::identity::Identity;

use crate::tls::ConnInfo;

/// The identity of a request's peer, as established at the TLS handshake.
fn identity<T>(request: &Request<T>) -> Result<&Identity, Status> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|c| &c.identity)
        .ok_or_else(|| Status::unauthenticated("no verified client certificate"))
}
