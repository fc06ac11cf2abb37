//! `vitals.v1.Specialist` over gRPC: maps requests to the specialist service
//! and its errors to gRPC statuses, in one place.

use tonic::{Request, Response, Status};
use vitals_proto::identity::Identity;
use vitals_proto::wire;
use vitals_proto::wire::specialist_server::Specialist;

use crate::service::{Caller, ServiceError, SpecialistService};

pub struct SpecialistApi {
    service: SpecialistService,
}

impl SpecialistApi {
    pub fn new(service: SpecialistService) -> Self {
        SpecialistApi { service }
    }
}

/// Only specialist certificates may call this service; an agent certificate
/// is refused whatever it asks.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    match super::identity(request)? {
        Identity::Specialist { name, role } => Ok(Caller {
            name: name.clone(),
            role: *role,
        }),
        Identity::Endpoint(id) => Err(Status::permission_denied(format!(
            "endpoint {id} holds an agent certificate; the Specialist API needs a specialist certificate"
        ))),
    }
}

fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::Forbidden { .. } => Status::permission_denied(e.to_string()),
        ServiceError::NotFound(m) => Status::not_found(m),
        ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
        ServiceError::Store(err) => {
            tracing::error!(error = %err, "specialist request failed in storage");
            Status::internal("storage error; see the collector log")
        }
    }
}

#[tonic::async_trait]
impl Specialist for SpecialistApi {
    async fn list_endpoints(
        &self,
        request: Request<wire::ListEndpointsRequest>,
    ) -> Result<Response<wire::ListEndpointsResponse>, Status> {
        let caller = caller(&request)?;
        let list = self
            .service
            .list_endpoints(&caller, request.get_ref().online_only)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ListEndpointsResponse {
            endpoints: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_endpoint(
        &self,
        request: Request<wire::GetEndpointRequest>,
    ) -> Result<Response<wire::EndpointDetail>, Status> {
        let caller = caller(&request)?;
        let detail = self
            .service
            .endpoint(&caller, &request.get_ref().endpoint_id)
            .await
            .map_err(status)?;
        Ok(Response::new(detail.into()))
    }

    async fn endpoint_history(
        &self,
        request: Request<wire::EndpointHistoryRequest>,
    ) -> Result<Response<wire::EndpointHistoryResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let entries = self
            .service
            .history(&caller, &r.endpoint_id, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::EndpointHistoryResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }

    async fn endpoint_faults(
        &self,
        request: Request<wire::EndpointFaultsRequest>,
    ) -> Result<Response<wire::EndpointFaultsResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let faults = self
            .service
            .faults(&caller, &r.endpoint_id, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::EndpointFaultsResponse {
            faults: faults.into_iter().map(Into::into).collect(),
        }))
    }
}
