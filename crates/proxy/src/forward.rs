//! One client request through the front door: requests nginx would refuse are refused, then the
//! maintenance gate, then delivery to a healthy instance with safe retries (the owner's tokens
//! removed, the X-Forwarded-* headers set), then the streamed response (or a protocol switch for
//! WebSocket).

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::backend::{Backend, InFlight};
use crate::body::{ClientBody, ClientBodyError, Kept, ProxyBody, RequestBody, Reuse, keep_up_to};
use crate::headers::{add_forwarded, refusal, scan, strip_hop_by_hop, visitor_ip, wants_upgrade};
use crate::idle::{Activity, GaveUp};
use crate::maintenance::{carries_token, strip_owner_tokens};
use crate::pool::{self, Sender};
use crate::retry::{
    BodyHandling, Failure, MAX_REPLAYABLE_BODY, Replay, body_handling, has_idempotency_key,
    may_retry,
};
use crate::server::Shared;

/// Upper bound on attempts for one request, whatever the number of instances.
const MAX_ATTEMPTS: usize = 8;

/// Facts about the client connection, computed once per connection.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) ip: IpAddr,
    pub(crate) ip_header: HeaderValue,
    /// The client is a proxy in `trusted_proxies`: its X-Forwarded-* headers are passed on.
    pub(crate) trusted: bool,
    /// The serving thread the connection runs on; its requests use that thread's instance
    /// connections.
    pub(crate) worker: usize,
    /// The connection's requests and timer (idle and response-header timeouts).
    pub(crate) activity: Arc<Activity>,
}

impl Client {
    pub(crate) fn new(ip: IpAddr, trusted: bool, worker: usize, activity: Arc<Activity>) -> Self {
        let ip = ip.to_canonical();
        let ip_header =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        Client {
            ip,
            ip_header,
            trusted,
            worker,
            activity,
        }
    }
}

/// The longest a request waits while the owner holds requests ([`crate::Proxy::hold_requests`]).
pub(crate) const MAX_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers one client request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    client: Arc<Client>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let found = scan(request.headers());
    if let Some(why) = refusal(request.method(), request.version(), &found) {
        return Ok(bad_request_response(why));
    }
    // Another front door asks whether this one serves (a standby checking its primary):
    // answered here, before maintenance (which this front door serves itself) and routing.
    if request
        .headers()
        .get(crate::health::FRONT_DOOR_CHECK.0)
        .is_some_and(|v| v.as_bytes() == crate::health::FRONT_DOOR_CHECK.1.as_bytes())
    {
        return Ok(front_door_answer(&shared));
    }
    if let Some(gate) = shared.maintenance.load().as_deref()
        && !gate.lets_through(
            request.headers(),
            visitor_ip(request.headers(), client.ip, client.trusted),
        )
    {
        return Ok(gate.response());
    }
    if *shared.held.borrow() {
        let mut released = shared.held.subscribe();
        let _ = tokio::time::timeout(MAX_HOLD, released.wait_for(|held| !*held)).await;
    }
    // Decided once, so that retries stay among the staged (preview) or the live instances.
    let lane = shared.registry.lane(|| {
        shared
            .preview_token
            .load()
            .as_deref()
            .is_some_and(|token| carries_token(request.headers(), token))
    });

    // Who the visitor is, for the password-guessing watch (read before the headers change).
    let visitor = visitor_ip(request.headers(), client.ip, client.trusted);
    let upgrade = found.hop_by_hop && wants_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    if found.hop_by_hop {
        strip_hop_by_hop(&mut parts.headers, upgrade);
    }
    if found.owner_token {
        strip_owner_tokens(&mut parts.headers);
    }
    add_forwarded(&mut parts.headers, &client.ip_header, client.trusted);
    to_origin_form(&mut parts.uri);
    let has_key = has_idempotency_key(&parts.headers);
    let body = match body_handling(has_key, body.is_end_stream(), body.size_hint().exact()) {
        BodyHandling::Empty => RequestBody::Empty,
        BodyHandling::Stream => {
            RequestBody::streaming(ClientBody::new(body, client.activity.clone()))
        }
        BodyHandling::Keep => match client
            .activity
            .woken_by_ticks(keep_up_to(
                ClientBody::new(body, client.activity.clone()),
                MAX_REPLAYABLE_BODY,
            ))
            .await
        {
            Ok(Kept::Whole(kept)) => {
                // The client already sent its whole body; asking the instance for a go-ahead
                // would only cost a round trip.
                parts.headers.remove(header::EXPECT);
                RequestBody::Kept(kept)
            }
            Ok(Kept::TooLong(streaming)) => streaming,
            Err(ClientBodyError::TimedOut) => return Ok(body_timeout_response()),
            Err(error) => {
                tracing::debug!(%error, "client request body could not be read");
                return Ok(unreadable_body_response());
            }
        },
    };
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let facts = Replay {
        method: &method,
        has_idempotency_key: has_key,
        body_held: body.copy().is_some(),
    };
    // Only a request that may be replayed after it was sent needs a copy of its head and body.
    let replay = if facts.is_possible() {
        body.copy().map(|body| (copy_head(&parts), body))
    } else {
        None
    };

    let mut pending = Some(Request::from_parts(parts, body));
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut retried_after_send = false;
    let mut last_error: Option<String> = None;

    for _ in 0..MAX_ATTEMPTS {
        let Some(backend) = shared.registry.pick(lane, &tried) else {
            break;
        };
        let Some(in_flight) = InFlight::enter(&backend) else {
            tried.push(backend);
            continue;
        };
        // So that a drain's deadline can find and close this connection.
        client.activity.sent_to(backend.serial);
        let (mut sender, reused) = match connection(&shared, &backend, client.worker).await {
            Ok(found) => found,
            Err(error) => {
                // Nothing was sent: the request is still ours and goes to another instance.
                shared.registry.eject(&backend, error.to_string());
                last_error = Some(error.to_string());
                tried.push(backend);
                continue;
            }
        };
        let Some(request) = pending.take() else { break };
        // Registered before the request goes: a verdict that comes while it waits wakes it.
        let went_down = backend.went_down.notified();
        let may_move = replay.is_some() && !retried_after_send;
        let response = pin!(sender.try_send_request(request));
        let sent = tokio::select! {
            biased;
            sent = client.activity.within_timeouts(&shared.clock, response) => Some(sent),
            _ = went_down, if may_move => None,
        };
        let Some(sent) = sent else {
            // The request waiting on a hung instance is dropped (and its connection with it),
            // and sent once to another instance.
            backend.forget_connections();
            last_error = Some(format!("instance {} stopped answering", backend.id));
            let (head, body) = replay.as_ref().expect("may_move needs a copy");
            debug_assert!(may_retry(
                Failure::InstanceWentDown,
                facts,
                retried_after_send
            ));
            retried_after_send = true;
            pending = body.copy().map(|body| rebuild(head, body));
            tried.push(backend);
            continue;
        };
        let failure = match sent {
            Ok(Ok(response)) => {
                shared.auth_watch.observe(
                    visitor,
                    response.status(),
                    uri.path(),
                    shared.registry.events(),
                );
                if crate::write_gate::may_write(&method)
                    && let Some(gate) = shared.write_gate.load_full()
                    && let Err(why) = gate.hold().await
                {
                    // The instance's answer is dropped with its connection: the client must
                    // not take a write for done that may not survive the loss of this node.
                    backend.forget_connections();
                    return Ok(not_durable_response(&why));
                }
                let reuse = Reuse {
                    sender,
                    backend,
                    worker: client.worker,
                };
                return Ok(respond(response, reuse, in_flight, client_upgrade));
            }
            Ok(Err(_)) | Err(GaveUp::BodyTimedOut) if client.activity.body_timed_out() => {
                // The client stopped sending its body: dropping the request (on return) aborts
                // it at the instance, and the instance connection with it.
                return Ok(body_timeout_response());
            }
            Ok(Err(mut error)) => {
                backend.forget_connections();
                last_error = Some(format!("instance {} failed: {}", backend.id, error.error()));
                match error.take_message() {
                    Some(unsent) => {
                        pending = Some(unsent);
                        Failure::NotSent
                    }
                    None => Failure::SentNoResponse,
                }
            }
            Err(_) => Failure::HeadersTimedOut,
        };
        match failure {
            Failure::NotSent => {}
            Failure::SentNoResponse => {
                let Some((head, body)) = replay
                    .as_ref()
                    .filter(|_| may_retry(failure, facts, retried_after_send))
                else {
                    return Ok(error_response(
                        StatusCode::BAD_GATEWAY,
                        last_error.as_deref(),
                    ));
                };
                retried_after_send = true;
                pending = body.copy().map(|body| rebuild(head, body));
            }
            Failure::HeadersTimedOut => {
                let why = format!("instance {} did not answer in time", backend.id);
                return Ok(error_response(StatusCode::GATEWAY_TIMEOUT, Some(&why)));
            }
            Failure::InstanceWentDown => unreachable!("handled where the request waits"),
        }
        // A reused connection may simply have been closed by the instance while parked; the
        // instance then gets another chance on a fresh connection (a dead one fails to connect
        // and is ejected). An instance that took the request and died without answering gets
        // no second chance: its listener may still accept for a moment while it is torn down,
        // and the one allowed replay must go to another instance.
        if !reused || failure == Failure::SentNoResponse {
            tried.push(backend);
        }
    }
    Ok(match last_error {
        Some(error) => error_response(StatusCode::BAD_GATEWAY, Some(&error)),
        None => no_instance_response(&shared),
    })
}

/// A parked connection that is ready for a request (`true`: reused), or a new one.
async fn connection(
    shared: &Shared,
    backend: &Backend,
    worker: usize,
) -> Result<(Sender, bool), pool::ConnectError> {
    while let Some(mut sender) = backend.pooled_connection(worker, shared.parked_idle) {
        if sender.ready().await.is_ok() {
            return Ok((sender, true));
        }
    }
    let sender = pool::connect(backend.addr, shared.config.timeouts.connect).await?;
    Ok((sender, false))
}

fn respond(
    mut response: Response<Incoming>,
    reuse: Reuse,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let instance_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(tunnel(client_upgrade, instance_upgrade));
        strip_hop_by_hop(response.headers_mut(), true);
        // The connection now belongs to the tunnel; it must not go back to the pool. The
        // tunnel is not counted in flight: draining an instance would otherwise wait for
        // every open WebSocket to end.
        drop(reuse);
        drop(in_flight);
        return response.map(|_| ProxyBody::full(bytes::Bytes::new()));
    }
    strip_hop_by_hop(response.headers_mut(), false);
    response.map(|body| ProxyBody::upstream(body, in_flight, Some(reuse)))
}

/// Copies bytes both ways between the client and the instance after a protocol switch.
async fn tunnel(client: hyper::upgrade::OnUpgrade, instance: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, instance) {
        Ok((client, instance)) => {
            let mut client = TokioIo::new(client);
            let mut instance = TokioIo::new(instance);
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        Err(error) => tracing::debug!(%error, "protocol switch failed"),
    }
}

/// What a replay needs of a request's head. The headers are kept as a flat list: one
/// allocation and a reference count per header, about half of what cloning the `HeaderMap`
/// (and dropping the clone) cost on every replayable request (callgrind); the map is built again
/// only for a replay, which is rare.
struct Head {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: Vec<(http::HeaderName, HeaderValue)>,
}

fn copy_head(parts: &Parts) -> Head {
    let mut headers = Vec::with_capacity(parts.headers.len());
    headers.extend(
        parts
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    Head {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers,
    }
}

fn rebuild(head: &Head, body: RequestBody) -> Request<RequestBody> {
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    let headers = request.headers_mut();
    headers.reserve(head.headers.len());
    for (name, value) in &head.headers {
        headers.append(name.clone(), value.clone());
    }
    request
}

/// Instances expect `/path?query`, not the absolute form a client may send to a proxy.
fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_some() || uri.authority().is_some() {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if let Ok(origin) = path.parse() {
            *uri = origin;
        }
    }
}

fn error_response(status: StatusCode, detail: Option<&str>) -> Response<ProxyBody> {
    if let Some(detail) = detail {
        tracing::warn!(%status, detail, "request failed at the front door");
    }
    let text = match status {
        StatusCode::GATEWAY_TIMEOUT => "The site did not answer in time.\n",
        _ => "The site could not be reached.\n",
    };
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A complete plain-text answer that closes the connection.
fn closing_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// nginx's answer to a request it will not serve: 400, and the connection is closed (what else
/// the client sent cannot be trusted to frame the next request).
fn bad_request_response(why: &str) -> Response<ProxyBody> {
    tracing::debug!(why, "request refused with a 400");
    closing_response(
        StatusCode::BAD_REQUEST,
        "Bad request: the front door does not serve this request.\n",
    )
}

/// The client stopped sending its request body: 408, and the connection is closed, as nginx's
/// `client_body_timeout` does (the rest of the body would never be read).
/// 503: the instance answered a write, but it could not be confirmed safe in time.
fn not_durable_response(why: &str) -> Response<ProxyBody> {
    let text = format!(
        "503 Service Unavailable: the site could not confirm your change was stored safely ({why}); \
         it may or may not have been kept: check, then try again\n"
    );
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn body_timeout_response() -> Response<ProxyBody> {
    closing_response(
        StatusCode::REQUEST_TIMEOUT,
        "The request body did not arrive in time; send the request again.\n",
    )
}

fn unreadable_body_response() -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(
        "The request body could not be read; send the request again.\n",
    ));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether this front door serves: 200 with how many instances take requests, or the
/// no-instance answer.
fn front_door_answer(shared: &Shared) -> Response<ProxyBody> {
    match shared.registry.serving() {
        0 => no_instance_response(shared),
        n => {
            let mut response = Response::new(ProxyBody::full(format!(
                "This front door serves: {n} healthy instance(s).\n"
            )));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

fn no_instance_response(shared: &Shared) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(
        "No healthy instance of the site is running.\n",
    ));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(shared.config.retry_after.as_secs().max(1)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_request_target_is_sent_in_origin_form() {
        let mut uri: Uri = "http://guestbook.example/entries?page=2".parse().unwrap();
        to_origin_form(&mut uri);
        assert_eq!(uri, "/entries?page=2");
        let mut uri: Uri = "/already/origin".parse().unwrap();
        to_origin_form(&mut uri);
        assert_eq!(uri, "/already/origin");
    }

    #[test]
    fn a_replayed_request_has_the_same_head_and_no_body() {
        let (parts, _) = Request::put("/entries/1")
            .header("x-request-id", "abc")
            .header("accept", "text/html")
            .header("accept", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        let replay = rebuild(&copy_head(&parts), RequestBody::Empty);
        assert_eq!(replay.method(), http::Method::PUT);
        assert_eq!(replay.uri(), "/entries/1");
        assert_eq!(replay.headers()["x-request-id"], "abc");
        let accept: Vec<_> = replay.headers().get_all("accept").iter().collect();
        assert_eq!(
            accept,
            ["text/html", "application/json"],
            "repeated headers, in order"
        );
        assert!(matches!(replay.body(), RequestBody::Empty));
    }
}
