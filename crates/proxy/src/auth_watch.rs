//! Notices password guessing: a client whose requests the site keeps refusing as
//! unauthorized (401 or 403) — thousands of wrong passwords on a login path, stolen session
//! cookies tried one after the other. Counted per visitor address in fixed windows; past the
//! threshold, one [`crate::ProxyEvent::AuthFailures`] per address per cooldown, so the owner
//! sees the attack on the timeline (and when it started) without a flood of events.
//!
//! The cost on the hot path is one comparison of the status code: only refused requests
//! take the lock. The table is bounded: past [`MAX_CLIENTS`] addresses, those whose window
//! ended are dropped first, then all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::sync::broadcast;

use crate::ProxyEvent;

/// Addresses tracked at most.
pub(crate) const MAX_CLIENTS: usize = 10_000;

/// When refused requests make an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailureAlert {
    /// Refused requests from one address...
    pub failures: u32,
    /// ...within this long.
    pub within: Duration,
    /// At most one event per address this often.
    pub cooldown: Duration,
}

impl Default for AuthFailureAlert {
    /// 20 refusals within a minute; one event per address per 10 minutes.
    fn default() -> Self {
        AuthFailureAlert {
            failures: 20,
            within: Duration::from_secs(60),
            cooldown: Duration::from_secs(600),
        }
    }
}

#[derive(Debug)]
struct Entry {
    window_start: Instant,
    count: u32,
    alerted_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct AuthWatch {
    alert: Option<AuthFailureAlert>,
    clients: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthWatch {
    pub(crate) fn new(alert: Option<AuthFailureAlert>) -> Self {
        AuthWatch {
            alert: alert.filter(|a| a.failures > 0),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a response to `client` for `path`; sends the alert through `events` when it is
    /// due.
    pub(crate) fn observe(
        &self,
        client: IpAddr,
        status: StatusCode,
        path: &str,
        events: &broadcast::Sender<ProxyEvent>,
    ) {
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            return;
        }
        let Some(alert) = self.alert else { return };
        self.observe_at(client, path, alert, Instant::now(), events);
    }

    fn observe_at(
        &self,
        client: IpAddr,
        path: &str,
        alert: AuthFailureAlert,
        now: Instant,
        events: &broadcast::Sender<ProxyEvent>,
    ) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, e| now.duration_since(e.window_start) < alert.within);
            if clients.len() >= MAX_CLIENTS {
                clients.clear();
            }
        }
        let e = clients.entry(client).or_insert(Entry {
            window_start: now,
            count: 0,
            alerted_at: None,
        });
        if now.duration_since(e.window_start) >= alert.within {
            e.window_start = now;
            e.count = 0;
        }
        e.count += 1;
        let cooled = e
            .alerted_at
            .is_none_or(|t| now.duration_since(t) >= alert.cooldown);
        if e.count >= alert.failures && cooled {
            e.alerted_at = Some(now);
            let _ = events.send(ProxyEvent::AuthFailures {
                client,
                failures: e.count,
                within: now.duration_since(e.window_start),
                path: path.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> AuthFailureAlert {
        AuthFailureAlert {
            failures: 3,
            within: Duration::from_secs(60),
            cooldown: Duration::from_secs(600),
        }
    }

    #[test]
    fn refusals_past_the_threshold_alert_once_per_cooldown_and_others_count_nothing() {
        let w = AuthWatch::new(Some(alert()));
        let (tx, mut rx) = broadcast::channel(16);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let t0 = Instant::now();
        w.observe(ip, StatusCode::OK, "/login", &tx);
        w.observe(ip, StatusCode::INTERNAL_SERVER_ERROR, "/login", &tx);
        for i in 0..2 {
            w.observe_at(ip, "/login", alert(), t0 + Duration::from_secs(i), &tx);
        }
        assert!(rx.try_recv().is_err(), "two refusals are not an attack");
        w.observe_at(ip, "/login", alert(), t0 + Duration::from_secs(2), &tx);
        match rx.try_recv().unwrap() {
            ProxyEvent::AuthFailures {
                client,
                failures,
                within,
                path,
            } => {
                assert_eq!((client, failures, path.as_str()), (ip, 3, "/login"));
                assert_eq!(within, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        // More of the same within the cooldown: no more events.
        for i in 3..50 {
            w.observe_at(ip, "/login", alert(), t0 + Duration::from_secs(i), &tx);
        }
        assert!(rx.try_recv().is_err());
        // After it, a new wave is told again.
        for i in 0..3 {
            w.observe_at(
                ip,
                "/login",
                alert(),
                t0 + Duration::from_secs(700 + i),
                &tx,
            );
        }
        assert!(matches!(rx.try_recv(), Ok(ProxyEvent::AuthFailures { .. })));
    }

    #[test]
    fn slow_refusals_in_separate_windows_do_not_add_up_and_the_table_stays_bounded() {
        let w = AuthWatch::new(Some(alert()));
        let (tx, mut rx) = broadcast::channel(16);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            w.observe_at(ip, "/login", alert(), t0 + Duration::from_secs(61 * i), &tx);
        }
        assert!(rx.try_recv().is_err());
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            w.observe_at(ip, "/x", alert(), t0, &tx);
        }
        assert!(w.clients.lock().unwrap().len() <= MAX_CLIENTS);
    }

    #[test]
    fn no_alert_when_turned_off() {
        let w = AuthWatch::new(None);
        let (tx, mut rx) = broadcast::channel(16);
        for _ in 0..100 {
            w.observe(
                "192.0.2.1".parse().unwrap(),
                StatusCode::UNAUTHORIZED,
                "/",
                &tx,
            );
        }
        assert!(rx.try_recv().is_err());
    }
}
