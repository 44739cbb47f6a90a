//! Where an execution's first step goes, as its starter (the daemon, or `stigmer run` against a
//! remote cluster) works it out before the workflow starts. The rule itself is
//! [`Route::decide`], in the workflow's types, so that the workflow and an older history read
//! the same way; this module gathers what the rule needs from the store and the starter's own
//! Docker host.

use crate::sandbox::{BACKEND, SandboxBackend, host_task_queue};
use crate::store::Store;
use stigmer_workflows::{Mode, Route, SandboxSpec};

/// The route of an execution in `mode` with `spec`:
/// - a Docker host with an idle container of the spec, from the store's leases (warm);
/// - else the image as `host` (the Docker host the starter serves, if any) has it (ready host);
/// - else the long way.
///
/// Both are hints: `exec` claims the container or acquires it, and the workflow falls back to
/// the long way when a warm container was taken meanwhile.
pub async fn route_for(
    store: &Store,
    host: Option<&SandboxBackend>,
    task_queue: &str,
    mode: Mode,
    spec: Option<&SandboxSpec>,
) -> Route {
    let warm_host = match spec {
        Some(spec) if mode == Mode::Sandbox && spec.allows_warm_path() => {
            warm_host(store, task_queue, spec).await
        }
        _ => None,
    };
    let image_ready = match (host, spec) {
        (Some(host), Some(spec)) if Route::wants_image_check(mode, spec, warm_host.as_deref()) => {
            host.present_image(spec).await
        }
        _ => None,
    };
    Route::decide(mode, spec, warm_host, image_ready)
}

/// The task queue of a Docker host with an idle container fit for `spec`, if the store knows one.
async fn warm_host(store: &Store, task_queue: &str, spec: &SandboxSpec) -> Option<String> {
    let hash = SandboxBackend::container_spec(spec, &spec.image)
        .ok()?
        .spec_hash();
    match store.idle_engine(BACKEND, &hash).await {
        Ok(engine) => engine.map(|engine| host_task_queue(task_queue, &engine)),
        Err(e) => {
            tracing::debug!("no warm-path hint: {e}");
            None
        }
    }
}
