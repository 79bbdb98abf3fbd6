//! The client side of the local API, used by the `lifeboat` command: one HTTP/1.1 request per
//! call over the site's unix socket. Errors say whether the daemon is not running at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use lifeboat_core::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{
    ApiError, EventsQuery, MaintenanceReport, MaintenanceRequest, ScaleChange, ScaleRequest,
    StatusReport, TimelineReport,
};
use crate::rewind::{RewindReport, RewindRequest};
use crate::{ControlError, SitePaths};

/// Opens a connection to a control socket some other way than from this process (the
/// simulator's, for a sandbox whose daemon admits only its own user namespace).
pub type SocketConnector = std::sync::Arc<
    dyn Fn(
            PathBuf,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<UnixStream>> + Send>,
        > + Send
        + Sync,
>;

/// Talks to the daemon of one site.
#[derive(Clone)]
pub struct ControlClient {
    dir: PathBuf,
    socket: PathBuf,
    connector: Option<SocketConnector>,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("dir", &self.dir)
            .field("socket", &self.socket)
            .field("connector", &self.connector.is_some())
            .finish()
    }
}

impl ControlClient {
    /// A client for the site in `dir`. Fails with [`ControlError::NotRunning`] when the site
    /// has no control socket.
    pub fn for_site(dir: &Path) -> Result<ControlClient, ControlError> {
        let socket = SitePaths::new(dir).socket();
        match std::fs::symlink_metadata(&socket) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(ControlError::PermissionDenied {
                    dir: dir.to_path_buf(),
                });
            }
            Err(_) => {
                return Err(ControlError::NotRunning {
                    dir: dir.to_path_buf(),
                });
            }
        }
        Ok(ControlClient {
            dir: dir.to_path_buf(),
            socket,
            connector: None,
        })
    }

    /// The same client, connecting through `connector`.
    pub fn with_connector(mut self, connector: SocketConnector) -> ControlClient {
        self.connector = Some(connector);
        self
    }

    pub async fn status(&self) -> Result<StatusReport, ControlError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    pub async fn scale(
        &self,
        scale: BTreeMap<String, u32>,
    ) -> Result<Vec<ScaleChange>, ControlError> {
        self.call(Method::POST, "/v1/scale", Some(&ScaleRequest { scale }))
            .await
    }

    pub async fn maintenance(
        &self,
        req: MaintenanceRequest,
    ) -> Result<MaintenanceReport, ControlError> {
        self.call(Method::POST, "/v1/maintenance", Some(&req)).await
    }

    pub async fn events(&self, query: &EventsQuery) -> Result<Vec<Event>, ControlError> {
        let mut params = Vec::new();
        if let Some(a) = query.after {
            params.push(format!("after={a}"));
        }
        if let Some(l) = query.last {
            params.push(format!("last={l}"));
        }
        if let Some(w) = query.wait_ms {
            params.push(format!("wait_ms={w}"));
        }
        let path = format!("/v1/events?{}", params.join("&"));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Moves the primary role of a cluster site to `to` (run on the primary).
    pub async fn switchover(
        &self,
        to: &str,
    ) -> Result<crate::node::SwitchoverReport, ControlError> {
        self.call(
            Method::POST,
            "/v1/switchover",
            Some(&crate::api::SwitchoverRequest { to: to.to_string() }),
        )
        .await
    }

    /// Asks the daemon to stop the site; returns once the request is accepted.
    pub async fn down(&self) -> Result<(), ControlError> {
        self.post_without_answer("/v1/down").await
    }

    /// A POST whose success has an empty body (202, 204).
    async fn post_without_answer(&self, path: &str) -> Result<(), ControlError> {
        let _: serde_json::Value =
            self.call(Method::POST, path, None::<&()>)
                .await
                .or_else(|e| match e {
                    ControlError::Api { .. } => Ok(serde_json::Value::Null),
                    e => Err(e),
                })?;
        Ok(())
    }

    /// Restore points, capture status and timeline events.
    pub async fn timeline(&self) -> Result<TimelineReport, ControlError> {
        self.call(Method::GET, "/v1/timeline", None::<&()>).await
    }

    /// Asks the daemon to ship what capture holds now; returns once it is durable.
    pub async fn ship(&self) -> Result<(), ControlError> {
        self.post_without_answer("/v1/ship").await
    }

    /// Rewinds the site; returns once the restored copy serves (or nothing changed).
    pub async fn rewind(&self, req: &RewindRequest) -> Result<RewindReport, ControlError> {
        self.call(Method::POST, "/v1/rewind", Some(req)).await
    }

    /// Undoes the last rewind.
    pub async fn undo(&self) -> Result<RewindReport, ControlError> {
        self.call(Method::POST, "/v1/rewind/undo", None::<&()>)
            .await
    }

    /// The site's states (live, previous, kept, incomplete) with their sizes.
    pub async fn states(&self) -> Result<Vec<crate::states::StateInfo>, ControlError> {
        self.call(Method::GET, "/v1/states", None::<&()>).await
    }

    /// Deletes states (never the live one).
    pub async fn drop_states(
        &self,
        req: &crate::states::DropRequest,
    ) -> Result<crate::states::DropReport, ControlError> {
        self.call(Method::POST, "/v1/states/drop", Some(req)).await
    }

    /// How a command of the site's `process` (default: web) sees the live state now, for
    /// `lifeboat exec`.
    pub async fn exec_view(
        &self,
        process: Option<&str>,
    ) -> Result<crate::view::ProcessView, ControlError> {
        let req = crate::view::ExecRequest {
            process: process.map(str::to_string),
        };
        self.call(Method::POST, "/v1/exec", Some(&req)).await
    }

    /// True while the daemon's socket file exists.
    pub fn socket_exists(&self) -> bool {
        self.socket.exists()
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ControlError> {
        let stream = match &self.connector {
            Some(connect) => connect(self.socket.clone()).await,
            None => UnixStream::connect(&self.socket).await,
        }
        .map_err(|_| ControlError::NotRunning {
            dir: self.dir.clone(),
        })?;
        let api = |message: String| ControlError::Api {
            dir: self.dir.clone(),
            message,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| api(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("requests serialize")),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lifeboat")
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .expect("request is well formed");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| api(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| api(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
            return Err(ControlError::Refused(message));
        }
        serde_json::from_slice(&body).map_err(|e| api(format!("unreadable answer: {e}")))
    }
}
