//! The specialist service layer: what a specialist may ask, with the role
//! check in one place. The gRPC edge and, later, the web console call this;
//! neither talks to storage directly.

use std::sync::Arc;

use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry};
use vitals_proto::identity::Role;

use crate::store::{Store, StoreError};

/// Default and largest number of history entries per request.
const HISTORY_DEFAULT: u32 = 50;
const HISTORY_MAX: u32 = 1000;

/// A requested number of entries: 0 means the default; large asks are capped.
fn page_size(limit: u32) -> u32 {
    match limit {
        0 => HISTORY_DEFAULT,
        n => n.min(HISTORY_MAX),
    }
}

/// The specialist making a request, as their certificate says.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{caller} has role {has}; this needs {needs}")]
    Forbidden {
        caller: String,
        has: Role,
        needs: Role,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct SpecialistService {
    store: Arc<dyn Store>,
}

impl SpecialistService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        SpecialistService { store }
    }

    fn require(caller: &Caller, needs: Role) -> Result<(), ServiceError> {
        if caller.role.allows(needs) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden {
                caller: caller.name.clone(),
                has: caller.role,
                needs,
            })
        }
    }

    pub async fn list_endpoints(
        &self,
        caller: &Caller,
        online_only: bool,
    ) -> Result<Vec<EndpointSummary>, ServiceError> {
        Self::require(caller, Role::Viewer)?;
        Ok(self.store.list_endpoints(online_only).await?)
    }

    pub async fn endpoint(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<EndpointDetail, ServiceError> {
        Self::require(caller, Role::Viewer)?;
        if id.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "endpoint_id is required".into(),
            ));
        }
        self.store
            .endpoint(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no endpoint \"{id}\"")))
    }

    pub async fn history(
        &self,
        caller: &Caller,
        id: &str,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, ServiceError> {
        // Checks the role and that the endpoint exists.
        self.endpoint(caller, id).await?;
        Ok(self.store.history(id, page_size(limit)).await?)
    }

    pub async fn faults(
        &self,
        caller: &Caller,
        id: &str,
        limit: u32,
    ) -> Result<Vec<FaultRecord>, ServiceError> {
        self.endpoint(caller, id).await?;
        Ok(self.store.faults(id, page_size(limit)).await?)
    }
}
