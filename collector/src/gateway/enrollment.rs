//! `vitals.v1.Enrollment`: the one service served to clients without a
//! fleet certificate. The caller is known only by its address, which the
//! enrollment layer rate-limits and audits.

use tonic::{Request, Response, Status};
use vitals_proto::wire;
use vitals_proto::wire::enrollment_server::Enrollment as EnrollmentRpc;

use crate::enrollment::{EnrollError, EnrollRequest, Enrollment, RenewExpiredRequest};
use crate::tls::AnonymousInfo;

/// The largest enrollment message accepted (a CSR is well under 2 KiB).
pub const MAX_MESSAGE: usize = 16 * 1024;

pub struct EnrollmentApi {
    enrollment: std::sync::Arc<Enrollment>,
}

impl EnrollmentApi {
    pub fn new(enrollment: std::sync::Arc<Enrollment>) -> Self {
        EnrollmentApi { enrollment }
    }
}

fn source<T>(request: &Request<T>) -> Result<std::net::IpAddr, Status> {
    request
        .extensions()
        .get::<AnonymousInfo>()
        .map(|i| i.remote.ip())
        .ok_or_else(|| Status::unauthenticated("enrollment is served without a certificate only"))
}

fn status(e: EnrollError) -> Status {
    match e {
        EnrollError::RateLimited => Status::resource_exhausted(e.to_string()),
        EnrollError::Store(_) => Status::unavailable("collector storage unavailable"),
        EnrollError::NoCa => Status::failed_precondition(e.to_string()),
        EnrollError::Csr(_) | EnrollError::BadId(_) | EnrollError::BadToken(_) => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::permission_denied(e.to_string()),
    }
}

#[tonic::async_trait]
impl EnrollmentRpc for EnrollmentApi {
    async fn enroll(
        &self,
        request: Request<wire::EnrollRequest>,
    ) -> Result<Response<wire::IssuedCertificate>, Status> {
        let from = source(&request)?;
        let r = request.into_inner();
        let req = EnrollRequest {
            token: r.token,
            csr_pem: r.csr_pem,
            endpoint_id: r.endpoint_id,
            hostname: r.hostname,
            machine_id: r.machine_id,
        };
        let issued = self.enrollment.enroll(req, from).await.map_err(status)?;
        Ok(Response::new(issued.into()))
    }

    async fn renew_expired(
        &self,
        request: Request<wire::RenewExpiredRequest>,
    ) -> Result<Response<wire::IssuedCertificate>, Status> {
        let from = source(&request)?;
        let r = request.into_inner();
        let req = RenewExpiredRequest {
            cert_pem: r.certificate_pem,
            csr_pem: r.csr_pem,
            signature: r.signature,
            machine_id: r.machine_id,
        };
        let issued = self
            .enrollment
            .renew_expired(req, from)
            .await
            .map_err(status)?;
        Ok(Response::new(issued.into()))
    }
}
