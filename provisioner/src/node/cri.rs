//! A joined node's pods stopped through the CRI before it powers off or reboots. kubelet's
//! own graceful node shutdown needs systemd's inhibitor locks, which a Plinth node has
//! not, so plinth-init does what it would: with kubelet already stopped (it would start
//! them again), every running container is asked to stop with its pod's own grace
//! period (`terminationGracePeriodSeconds`, which kubelet writes on each container as an
//! annotation), all at once, each one SIGTERM first and SIGKILL once its grace is over;
//! then every pod sandbox (the pause process and the pod's network).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tonic::transport::{Channel, Endpoint};

use crate::error::Error;
use crate::Result;

/// The generated messages and client (proto/cri.proto).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod api {
    tonic::include_proto!("runtime.v1");
}

use api::runtime_service_client::RuntimeServiceClient;

/// The annotation kubelet puts on each container: its pod's grace period, in seconds.
const GRACE_ANNOTATION: &str = "io.kubernetes.pod.terminationGracePeriod";
/// A pod's grace period when its container does not say (Kubernetes' default).
const DEFAULT_GRACE_SECS: i64 = 30;
/// How long a call that does not wait for a container may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One container stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedContainer {
    /// `NAMESPACE/NAME` of its pod.
    pub pod: String,
    /// Its name in the pod.
    pub container: String,
    /// The grace period it was given, in seconds.
    pub grace_secs: i64,
    /// When its stop was asked for, from the start of [`stop_pods`] (all at once: about
    /// the same for every container).
    pub began: Duration,
    /// How long it took to stop.
    pub took: Duration,
    /// Its exit code, as the runtime recorded it (137: killed when its grace ran out).
    pub exit_code: Option<i32>,
    /// Why stopping it failed, if it did.
    pub error: Option<String>,
}

/// What [`stop_pods`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Each running container, in the order listed.
    pub containers: Vec<StoppedContainer>,
    /// Pod sandboxes stopped.
    pub sandboxes: usize,
    /// Sandboxes that would not stop, each with why.
    pub errors: Vec<String>,
}

/// Stops every running container, each with its pod's grace period (at most
/// `max_grace`), all at once, then every ready pod sandbox, through the CRI at `socket`.
/// An error only when the runtime cannot be asked at all; one container or sandbox that
/// will not stop is recorded and the rest still stopped.
pub async fn stop_pods(socket: &Path, max_grace: Duration) -> Result<Stopped> {
    let mut cri = connect(socket).await?;
    let listed = cri
        .list_containers(call(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        }))
        .await
        .map_err(|s| grpc("listing the running containers", socket, &s))?
        .into_inner()
        .containers;
    let max_secs = i64::try_from(max_grace.as_secs()).unwrap_or(i64::MAX);
    let t0 = Instant::now();
    let stops = listed.iter().map(|c| {
        let mut cri = cri.clone();
        let grace = grace_secs(&c.annotations).min(max_secs);
        async move {
            let started = Instant::now();
            let began = t0.elapsed();
            let mut req = tonic::Request::new(api::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: grace,
            });
            // The runtime kills it when the grace is over; this only bounds a runtime
            // that does not answer.
            req.set_timeout(Duration::from_secs(grace.unsigned_abs()) + CALL_TIMEOUT);
            let stopped = cri.stop_container(req).await;
            let took = started.elapsed();
            let (exit_code, error) = match stopped {
                Ok(_) => match cri
                    .container_status(call(api::ContainerStatusRequest {
                        container_id: c.id.clone(),
                    }))
                    .await
                {
                    Ok(s) => (s.into_inner().status.map(|s| s.exit_code), None),
                    Err(s) => (None, Some(format!("its status: {}", s.message()))),
                },
                Err(s) => (None, Some(s.message().to_string())),
            };
            StoppedContainer {
                pod: pod_of(&c.labels),
                container: c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| c.id.clone()),
                grace_secs: grace,
                began,
                took,
                exit_code,
                error,
            }
        }
    });
    let mut stopped = Stopped {
        containers: join_all(stops).await,
        ..Default::default()
    };
    // The containers' outcome is kept whatever happens to the sandboxes.
    let sandboxes = match cri
        .list_pod_sandbox(call(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                state: Some(api::PodSandboxStateValue {
                    state: api::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        }))
        .await
    {
        Ok(r) => r.into_inner().items,
        Err(s) => {
            stopped
                .errors
                .push(grpc("listing the pod sandboxes", socket, &s).to_string());
            Vec::new()
        }
    };
    let results = join_all(sandboxes.iter().map(|p| {
        let mut cri = cri.clone();
        async move {
            cri.stop_pod_sandbox(call(api::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            }))
            .await
            .map_err(|s| {
                let name = p
                    .metadata
                    .as_ref()
                    .map(|m| format!("{}/{}", m.namespace, m.name))
                    .unwrap_or_else(|| p.id.clone());
                format!("stopping pod {name}: {}", s.message())
            })
        }
    }))
    .await;
    for r in results {
        match r {
            Ok(_) => stopped.sandboxes += 1,
            Err(e) => stopped.errors.push(e),
        }
    }
    Ok(stopped)
}

/// A channel to the CRI server listening on the Unix socket `socket`.
async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>> {
    let path: PathBuf = socket.to_path_buf();
    // The URI is not used: every connection is the socket's.
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| Error::Protocol {
            what: format!("connecting to the CRI at {}", socket.display()),
            reason: error_chain(&e),
        })?;
    Ok(RuntimeServiceClient::new(channel))
}

/// A request with the short deadline.
fn call<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

fn grpc(what: &str, socket: &Path, s: &tonic::Status) -> Error {
    Error::Protocol {
        what: format!("{what} (CRI at {})", socket.display()),
        reason: format!("{:?}: {}", s.code(), s.message()),
    }
}

/// The error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The grace period kubelet recorded on a container, or Kubernetes' default; never
/// negative.
fn grace_secs(annotations: &HashMap<String, String>) -> i64 {
    annotations
        .get(GRACE_ANNOTATION)
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(DEFAULT_GRACE_SECS)
        .max(0)
}

/// `NAMESPACE/NAME` of a container's pod, from kubelet's labels.
fn pod_of(labels: &HashMap<String, String>) -> String {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("?");
    format!(
        "{}/{}",
        get("io.kubernetes.pod.namespace"),
        get("io.kubernetes.pod.name")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_is_the_pods_or_the_default() {
        let mut a = HashMap::new();
        assert_eq!(grace_secs(&a), 30);
        a.insert(GRACE_ANNOTATION.to_string(), "7".to_string());
        assert_eq!(grace_secs(&a), 7);
        a.insert(GRACE_ANNOTATION.to_string(), "-3".to_string());
        assert_eq!(grace_secs(&a), 0);
        a.insert(GRACE_ANNOTATION.to_string(), "soon".to_string());
        assert_eq!(grace_secs(&a), 30);
    }

    #[test]
    fn a_pod_is_named_by_kubelets_labels() {
        let mut l = HashMap::new();
        assert_eq!(pod_of(&l), "?/?");
        l.insert("io.kubernetes.pod.namespace".into(), "default".into());
        l.insert("io.kubernetes.pod.name".into(), "hello".into());
        assert_eq!(pod_of(&l), "default/hello");
    }

    #[test]
    fn no_runtime_at_the_socket_is_an_error_naming_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let e = rt
            .block_on(stop_pods(
                Path::new("/nonexistent/containerd.sock"),
                Duration::from_secs(1),
            ))
            .expect_err("no CRI there");
        assert!(
            e.to_string().contains("/nonexistent/containerd.sock"),
            "{e}"
        );
    }
}
