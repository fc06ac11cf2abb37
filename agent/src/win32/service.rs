//! Running under the Service Control Manager, and registering with it:
//! `vitals-agent service install | uninstall | start | stop | status`, and
//! `vitals-agent run` reporting start pending, running, stop pending and
//! stopped when the SCM starts it.

use std::ffi::OsString;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vitals_proto::shutdown::{self, Shutdown};
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::service_dispatcher;
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

/// The service's name in the SCM (`sc query VitalsAgent`).
pub const NAME: &str = "VitalsAgent";
const DISPLAY_NAME: &str = "Vitals Agent";
const DESCRIPTION: &str = "Watches this workstation's hardware, system, printer and network health and reports it to the help desk's Vitals collector.";
const TYPE: ServiceType = ServiceType::OWN_PROCESS;
/// ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: not started by the SCM.
const NOT_A_SERVICE: i32 = 1063;
/// ERROR_SERVICE_DOES_NOT_EXIST.
const NO_SUCH_SERVICE: i32 = 1060;
/// ERROR_SERVICE_ALREADY_RUNNING.
const ALREADY_RUNNING: i32 = 1056;

fn text(e: windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn os_code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

/// What the service runs: the agent until `Shutdown`, `stopping` called
/// when the SCM asks it to stop. Returns the process's exit code.
pub type Body = fn(Shutdown, &dyn Fn()) -> u32;

static BODY: OnceLock<Body> = OnceLock::new();

/// Hands the process to the SCM if it started it: `Ok(Some(code))` once
/// the service has stopped, `Ok(None)` when started from a console.
pub fn dispatch(body: Body) -> Result<Option<u32>, String> {
    let _ = BODY.set(body);
    match service_dispatcher::start(NAME, ffi_service_main) {
        Ok(()) => Ok(Some(EXIT.get().copied().unwrap_or(0))),
        Err(e) if os_code(&e) == Some(NOT_A_SERVICE) => Ok(None),
        Err(e) => Err(format!("the Service Control Manager: {}", text(e))),
    }
}

static EXIT: OnceLock<u32> = OnceLock::new();

windows_service::define_windows_service!(ffi_service_main, service_main);

fn status(handle: &ServiceStatusHandle, state: ServiceState, checkpoint: u32, exit: u32) {
    let accept = if state == ServiceState::Running {
        ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
    } else {
        ServiceControlAccept::empty()
    };
    let pending = matches!(
        state,
        ServiceState::StartPending | ServiceState::StopPending
    );
    let _ = handle.set_service_status(ServiceStatus {
        service_type: TYPE,
        current_state: state,
        controls_accepted: accept,
        exit_code: if exit == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint,
        wait_hint: if pending {
            Duration::from_secs(20)
        } else {
            Duration::ZERO
        },
        process_id: None,
    });
}

fn service_main(_arguments: Vec<OsString>) {
    let (trigger, stop) = shutdown::channel();
    let trigger = std::sync::Mutex::new(Some(trigger));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Ok(t) = trigger.lock()
                && let Some(t) = t.as_ref()
            {
                t.trigger();
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(handle) = service_control_handler::register(NAME, handler) else {
        return;
    };
    status(&handle, ServiceState::StartPending, 1, 0);
    let Some(body) = BODY.get() else {
        status(&handle, ServiceState::Stopped, 0, 1);
        return;
    };
    status(&handle, ServiceState::Running, 0, 0);
    let stopping = || status(&handle, ServiceState::StopPending, 1, 0);
    let code = body(stop, &stopping);
    let _ = EXIT.set(code);
    status(&handle, ServiceState::Stopped, 0, code);
}

/// Who the service runs as: LocalSystem unless an account is given.
pub struct Account {
    pub name: String,
    pub password: Option<String>,
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| {
        format!(
            "cannot open the Service Control Manager: {} (run as an administrator)",
            text(e)
        )
    })
}

/// Registers the service (automatic start, restarted on failure) and its
/// event source, or updates them in place when they exist: an upgrade
/// keeps them.
pub fn install(exe: &Path, config: &Path, account: Option<Account>) -> Result<(), String> {
    let scm = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = ServiceInfo {
        name: NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: TYPE,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe.to_path_buf(),
        launch_arguments: vec![
            "run".into(),
            "--config".into(),
            config.as_os_str().to_owned(),
        ],
        dependencies: vec![],
        account_name: account.as_ref().map(|a| OsString::from(&a.name)),
        account_password: account
            .as_ref()
            .and_then(|a| a.password.as_ref().map(OsString::from)),
    };
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS;
    let service = match scm.open_service(NAME, access) {
        Ok(existing) => {
            existing
                .change_config(&info)
                .map_err(|e| format!("cannot update the service: {}", text(e)))?;
            existing
        }
        Err(_) => scm
            .create_service(&info, access)
            .map_err(|e| format!("cannot register the service: {}", text(e)))?,
    };
    let _ = service.set_description(DESCRIPTION);
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(10), restart(30), restart(60)]),
        })
        .map_err(|e| format!("cannot set the service's restart on failure: {}", text(e)))?;
    // An exit with an error counts as a failure too, not only a crash.
    let _ = service.set_failure_actions_on_non_crash_failures(true);
    super::eventlog::register_source(exe)
}

/// Stops the service if it runs, then removes it.
pub fn uninstall() -> Result<bool, String> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::STOP | ServiceAccess::QUERY_STATUS | ServiceAccess::DELETE;
    let service = match scm.open_service(NAME, access) {
        Ok(s) => s,
        Err(e) if os_code(&e) == Some(NO_SUCH_SERVICE) => return Ok(false),
        Err(e) => return Err(format!("cannot open the service: {}", text(e))),
    };
    stop_and_wait(&service)?;
    service
        .delete()
        .map_err(|e| format!("cannot remove the service: {}", text(e)))?;
    super::eventlog::unregister_source();
    Ok(true)
}

/// The service, with the manager it was opened through: the manager's
/// handle must outlive the service's (Wine invalidates it otherwise).
struct Opened {
    service: windows_service::service::Service,
    _scm: ServiceManager,
}

fn open(access: ServiceAccess) -> Result<Opened, String> {
    let scm = manager(ServiceManagerAccess::CONNECT)?;
    let opened = scm.open_service(NAME, access);
    let service = opened.map_err(|e| {
        if os_code(&e) == Some(NO_SUCH_SERVICE) {
            format!("the {NAME} service is not installed (vitals-agent service install)")
        } else {
            format!("cannot open the service: {}", text(e))
        }
    })?;
    Ok(Opened { service, _scm: scm })
}

fn wait_for(
    service: &windows_service::service::Service,
    want: ServiceState,
    within: Duration,
) -> Result<ServiceState, String> {
    let deadline = Instant::now() + within;
    loop {
        let state = service
            .query_status()
            .map_err(|e| format!("cannot query the service: {}", text(e)))?
            .current_state;
        if state == want || Instant::now() >= deadline {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_and_wait(service: &windows_service::service::Service) -> Result<(), String> {
    let state = service
        .query_status()
        .map_err(|e| format!("cannot query the service: {}", text(e)))?
        .current_state;
    if state == ServiceState::Stopped {
        return Ok(());
    }
    service
        .stop()
        .map_err(|e| format!("cannot stop the service: {}", text(e)))?;
    reach(service, ServiceState::Stopped, "stop")
}

/// Waits up to 30 s for the service to reach `want`, saying where it is
/// if it does not.
fn reach(
    service: &windows_service::service::Service,
    want: ServiceState,
    verb: &str,
) -> Result<(), String> {
    match wait_for(service, want, Duration::from_secs(30))? {
        state if state == want => Ok(()),
        other => Err(format!(
            "the service did not {verb} within 30 s (it is {})",
            state_text(other)
        )),
    }
}

/// Starts the service and waits until it runs.
pub fn start() -> Result<(), String> {
    let opened = open(ServiceAccess::START | ServiceAccess::QUERY_STATUS)?;
    let service = &opened.service;
    match service.start::<&str>(&[]) {
        Ok(()) => {}
        Err(e) if os_code(&e) == Some(ALREADY_RUNNING) => return Ok(()),
        Err(e) => return Err(format!("cannot start the service: {}", text(e))),
    }
    reach(service, ServiceState::Running, "start")
}

/// Stops the service and waits until it has (its outbox flushed).
pub fn stop() -> Result<(), String> {
    stop_and_wait(&open(ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?.service)
}

/// The service's state in words.
pub fn state() -> Result<&'static str, String> {
    open(ServiceAccess::QUERY_STATUS)?
        .service
        .query_status()
        .map(|s| state_text(s.current_state))
        .map_err(|e| format!("cannot query the service: {}", text(e)))
}

fn state_text(s: ServiceState) -> &'static str {
    match s {
        ServiceState::Stopped => "stopped",
        ServiceState::StartPending => "start pending",
        ServiceState::StopPending => "stop pending",
        ServiceState::Running => "running",
        ServiceState::ContinuePending => "continue pending",
        ServiceState::PausePending => "pause pending",
        ServiceState::Paused => "paused",
    }
}
