//! Named crash points, armed by tests and the harness to kill a process at an exact step of
//! the protocol. Built on the `fail` crate; they do nothing unless the binary was built with
//! the `failpoints` feature.
//!
//! Actions are the `fail` crate's, plus `crash`: abort the process on the spot, skipping every
//! destructor and flush, as kill -9 would. Arm them at start with the `TXN_FAILPOINTS`
//! environment variable (`name=action;name=action`) or at run time through the `Failpoints`
//! gRPC service ([`FailpointService`]).

use tonic::{Request, Response, Status};

use txn_proto::pb::v1 as pb;

/// Environment variable read at process start.
pub const ENV_VAR: &str = "TXN_FAILPOINTS";

/// Whether this binary was built with failpoints.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Set once any failpoint is armed with an action that blocks its thread (`pause`, `sleep`).
static BLOCKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Evaluates the failpoint `name`: crashes, sleeps, pauses or panics if it is armed so. An
/// action that blocks runs off the async runtime's worker (`block_in_place`): a worker blocked
/// in place would strand the tasks queued on it, such as the calls the test makes meanwhile.
pub fn hit(name: &str) {
    if !ENABLED {
        return;
    }
    let eval = || fail::eval(name, |_| crash(name));
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker && BLOCKING.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::task::block_in_place(eval);
    } else {
        eval();
    }
}

/// True while the failpoint `name` is armed with any action that returns (`crash` or
/// `return`): for hooks that simulate a condition rather than crash.
pub fn armed(name: &str) -> bool {
    ENABLED && fail::eval(name, |_| ()).is_some()
}

fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing the process");
    // SIGKILL ourselves: exactly what kill -9 does (no destructors, no flush, no core file).
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// What an armed failpoint does, parsed once from its text (`off`, `crash`, or one of the
/// `fail` crate's actions, where `crash` stands for its `return`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Disarmed.
    Off,
    /// Kill the process on the spot (kill -9), every time it is reached.
    Crash,
    /// Any other `fail` crate action, in its own syntax with `crash` for `return`: a count or
    /// probability (`1*crash`, `50%crash`), `sleep(MS)`, `pause`, `panic`, `print(MSG)`...
    Fail(String),
}

impl Action {
    pub fn parse(raw: &str) -> Self {
        match raw.trim() {
            "" | "off" => Action::Off,
            "crash" => Action::Crash,
            other => Action::Fail(other.to_owned()),
        }
    }

    /// The `fail` crate's text for it; None when disarmed.
    fn to_fail(&self) -> Option<String> {
        match self {
            Action::Off => None,
            Action::Crash => Some("return".into()),
            Action::Fail(spec) => Some(spec.replace("crash", "return")),
        }
    }

    /// Reads back the `fail` crate's text of an armed failpoint.
    fn from_fail(spec: &str) -> Self {
        Self::parse(&spec.replace("return", "crash"))
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Off => f.write_str("off"),
            Action::Crash => f.write_str("crash"),
            Action::Fail(spec) => f.write_str(spec),
        }
    }
}

/// Arms one failpoint. `known` lists the names the binary has.
pub fn set(known: &[&str], name: &str, action: &str) -> Result<(), Status> {
    if !ENABLED {
        return Err(Status::failed_precondition(
            "this binary was built without the failpoints feature",
        ));
    }
    if !known.contains(&name) {
        return Err(Status::not_found(format!(
            "name: unknown failpoint {name:?}; known: {}",
            known.join(", ")
        )));
    }
    let action = Action::parse(action);
    match action.to_fail() {
        None => {
            fail::remove(name);
            Ok(())
        }
        Some(spec) => {
            if spec.contains("pause") || spec.contains("sleep") {
                BLOCKING.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            fail::cfg(name, &spec).map_err(|e| {
                Status::invalid_argument(format!("action: {:?}: {e}", action.to_string()))
            })
        }
    }
}

/// Arms the failpoints named in `TXN_FAILPOINTS`. Errors name the bad entry.
pub fn setup_from_env(known: &[&str]) -> Result<(), String> {
    let Ok(spec) = std::env::var(ENV_VAR) else {
        return Ok(());
    };
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, action) = entry
            .split_once('=')
            .ok_or_else(|| format!("{ENV_VAR}: {entry:?} is not NAME=ACTION"))?;
        set(known, name.trim(), action).map_err(|s| format!("{ENV_VAR}: {}", s.message()))?;
    }
    Ok(())
}

/// The `Failpoints` gRPC service over a binary's known failpoint names.
#[derive(Clone)]
pub struct FailpointService {
    known: &'static [&'static str],
}

impl FailpointService {
    pub fn new(known: &'static [&'static str]) -> Self {
        Self { known }
    }
}

#[tonic::async_trait]
impl pb::failpoints_server::Failpoints for FailpointService {
    async fn set_failpoint(
        &self,
        request: Request<pb::SetFailpointRequest>,
    ) -> Result<Response<pb::SetFailpointResponse>, Status> {
        let r = request.into_inner();
        set(self.known, &r.name, &r.action)?;
        tracing::warn!(name = %r.name, action = %r.action, "failpoint set");
        Ok(Response::new(pb::SetFailpointResponse {}))
    }

    async fn list_failpoints(
        &self,
        _request: Request<pb::ListFailpointsRequest>,
    ) -> Result<Response<pb::ListFailpointsResponse>, Status> {
        let armed: std::collections::HashMap<String, String> = fail::list().into_iter().collect();
        let failpoints = self
            .known
            .iter()
            .map(|name| pb::Failpoint {
                name: (*name).to_owned(),
                action: armed
                    .get(*name)
                    .map(|a| Action::from_fail(a))
                    .unwrap_or(Action::Off)
                    .to_string(),
            })
            .collect();
        Ok(Response::new(pb::ListFailpointsResponse { failpoints }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_back_as_they_were_written() {
        assert_eq!(Action::parse(" off "), Action::Off);
        assert_eq!(Action::parse(""), Action::Off);
        assert_eq!(Action::parse("crash"), Action::Crash);
        assert_eq!(Action::Crash.to_fail().as_deref(), Some("return"));
        let counted = Action::parse("1*crash");
        assert_eq!(counted.to_fail().as_deref(), Some("1*return"));
        assert_eq!(Action::from_fail("1*return"), counted);
        assert_eq!(Action::from_fail("return"), Action::Crash);
        assert_eq!(Action::parse("sleep(100)").to_string(), "sleep(100)");
    }
}
