//! The specialist service layer: what a specialist may ask, with the role
//! check in one place. The gRPC edge and, later, the web console call this;
//! neither talks to storage directly.

use std::sync::Arc;

use vitals_proto::domain::{EndpointDetail, EndpointSummary, FaultRecord, HistoryEntry};
use vitals_proto::identity::Role;

use tokio::sync::broadcast;
use vitals_proto::domain::Severity;
use vitals_proto::tickets::{Entry, Ticket, TicketDetail};

use crate::store::{Store, StoreError, TicketFilter};
use crate::tickets::engine::Action;
use crate::tickets::kb::KnowledgeBase;
use crate::tickets::{DeskError, TicketDesk};

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
    #[error("{0}")]
    Unavailable(String),
}

impl From<DeskError> for ServiceError {
    fn from(e: DeskError) -> Self {
        match e {
            DeskError::NoTicket(id) => ServiceError::NotFound(format!("no ticket {id}")),
            DeskError::Stopped => ServiceError::Unavailable(e.to_string()),
            DeskError::Store(s) => ServiceError::Store(s),
        }
    }
}

#[derive(Clone)]
pub struct SpecialistService {
    store: Arc<dyn Store>,
    desk: TicketDesk,
    kb: KnowledgeBase,
}

impl SpecialistService {
    pub fn new(store: Arc<dyn Store>, desk: TicketDesk, kb: KnowledgeBase) -> Self {
        SpecialistService { store, desk, kb }
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

    pub async fn tickets(
        &self,
        caller: &Caller,
        mut filter: TicketFilter,
    ) -> Result<Vec<Ticket>, ServiceError> {
        Self::require(caller, Role::Viewer)?;
        filter.limit = page_size(filter.limit);
        Ok(self.store.tickets(filter).await?)
    }

    pub async fn ticket(&self, caller: &Caller, id: u64) -> Result<TicketDetail, ServiceError> {
        Self::require(caller, Role::Viewer)?;
        let mut d = self
            .store
            .ticket(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no ticket {id}")))?;
        d.knowledge = self.kb.article(&d.ticket.check_id);
        Ok(d)
    }

    /// A specialist's change to a ticket; returns the ticket as it is now.
    pub async fn act(
        &self,
        caller: &Caller,
        id: u64,
        action: Action,
    ) -> Result<TicketDetail, ServiceError> {
        Self::require(caller, Role::Specialist)?;
        match &action {
            Action::Assign(who) if who.trim().is_empty() => {
                return Err(ServiceError::InvalidArgument("assign to whom?".into()));
            }
            Action::Comment(text) | Action::Resolve(text) if text.trim().is_empty() => {
                return Err(ServiceError::InvalidArgument(
                    "a comment or resolution needs text".into(),
                ));
            }
            Action::Reopen(_) => {
                let t = self.ticket(caller, id).await?.ticket;
                if t.status.is_open() {
                    return Err(ServiceError::InvalidArgument(format!(
                        "ticket {id} is {}; only a resolved or closed ticket can be reopened",
                        t.status.as_str()
                    )));
                }
            }
            _ => {}
        }
        self.desk.act(id, &caller.name, action).await?;
        self.ticket(caller, id).await
    }

    /// A ticket opened by hand against a known endpoint.
    pub async fn open_ticket(
        &self,
        caller: &Caller,
        endpoint: &str,
        title: &str,
        severity: Severity,
        description: &str,
    ) -> Result<TicketDetail, ServiceError> {
        Self::require(caller, Role::Specialist)?;
        if title.trim().is_empty() {
            return Err(ServiceError::InvalidArgument(
                "a ticket needs a title".into(),
            ));
        }
        self.endpoint(caller, endpoint).await?;
        let id = self
            .desk
            .open(endpoint, title, severity, description, &caller.name)
            .await?;
        self.ticket(caller, id).await
    }

    /// Every ticket change from now on.
    pub fn watch(&self, caller: &Caller) -> Result<broadcast::Receiver<Entry>, ServiceError> {
        Self::require(caller, Role::Viewer)?;
        Ok(self.desk.watch())
    }
}
