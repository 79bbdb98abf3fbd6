//! The keeper's timing on paused tokio time, with a fake etcd that answers as told.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use super::*;

#[derive(Clone, Copy, Debug)]
enum Renewals {
    /// Renewed, answering after this long.
    AnswerAfter(Duration),
    /// Unreachable at once.
    Fail,
    /// Never answers.
    Hang,
    /// The lease is gone.
    Gone,
}

struct FakeEtcd {
    renewals: Mutex<Renewals>,
    next_id: AtomicI64,
    keepalives: AtomicUsize,
}

impl FakeEtcd {
    fn new(renewals: Renewals) -> Arc<FakeEtcd> {
        Arc::new(FakeEtcd {
            renewals: Mutex::new(renewals),
            next_id: AtomicI64::new(1),
            keepalives: AtomicUsize::new(0),
        })
    }

    fn set(&self, r: Renewals) {
        *self.renewals.lock().unwrap() = r;
    }
}

fn unreachable() -> EtcdError {
    EtcdError::Unreachable {
        op: "renew a lease",
        attempts: Vec::new(),
    }
}

impl LeaseApi for FakeEtcd {
    fn grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseGrant, EtcdError>> {
        let id = LeaseId(self.next_id.fetch_add(1, Ordering::SeqCst));
        Box::pin(async move {
            Ok(LeaseGrant {
                id,
                ttl: ttl.max(Duration::from_secs(2)),
            })
        })
    }

    fn keepalive(
        &self,
        _id: LeaseId,
        _budget: Duration,
    ) -> BoxFuture<'_, Result<KeepAlive, EtcdError>> {
        self.keepalives.fetch_add(1, Ordering::SeqCst);
        let mode = *self.renewals.lock().unwrap();
        Box::pin(async move {
            match mode {
                Renewals::AnswerAfter(d) => {
                    tokio::time::sleep(d).await;
                    Ok(KeepAlive::Alive {
                        ttl: Duration::from_secs(2),
                    })
                }
                Renewals::Fail => Err(unreachable()),
                Renewals::Hang => std::future::pending().await,
                Renewals::Gone => Ok(KeepAlive::Gone),
            }
        })
    }

    fn revoke(&self, _id: LeaseId) -> BoxFuture<'_, Result<(), EtcdError>> {
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        "fake etcd".into()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn until(rx: &mut watch::Receiver<LeaseStatus>, f: impl Fn(&LeaseStatus) -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if f(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the lease reached the expected state");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_when_the_renewal_was_sent_not_answered() {
    let etcd = FakeEtcd::new(Renewals::AnswerAfter(ms(300)));
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    let mut rx = keeper.subscribe();
    until(&mut rx, |s| s.id.is_some()).await;
    // Wait for a renewal to land: its send time is 300 ms before its answer.
    until(&mut rx, |s| {
        s.last_renewal_sent
            .is_some_and(|sent| s.last_contact.unwrap() - sent >= ms(300))
    })
    .await;
    let st = keeper.status();
    let sent = st.last_renewal_sent.unwrap();
    assert_eq!(st.fence_deadline, Some(sent + ms(1_500)));
    assert_eq!(st.state, LeaseState::Alive);
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_renewals_fail_is_unconfirmed_exactly_at_its_fence_deadline() {
    let etcd = FakeEtcd::new(Renewals::Fail);
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    let mut rx = keeper.subscribe();
    until(&mut rx, |s| s.id.is_some()).await;
    let granted_sent = keeper.status().last_renewal_sent.unwrap();
    until(&mut rx, |s| s.state == LeaseState::Unconfirmed).await;
    assert_eq!(Instant::now(), granted_sent + ms(1_500));
    // The renewals went on meanwhile, on the same lease.
    assert!(etcd.keepalives.load(Ordering::SeqCst) >= 2);
    assert_eq!(keeper.status().id, Some(LeaseId(1)));
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_never_answers_is_cut_at_the_renewal_interval() {
    let etcd = FakeEtcd::new(Renewals::Hang);
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    let mut rx = keeper.subscribe();
    until(&mut rx, |s| s.id.is_some()).await;
    let granted_sent = keeper.status().last_renewal_sent.unwrap();
    until(&mut rx, |s| s.state == LeaseState::Unconfirmed).await;
    // A hanging renewal did not hold the deadline back.
    assert_eq!(Instant::now(), granted_sent + ms(1_500));
    tokio::time::sleep(ms(2_000)).await;
    // One attempt per interval, each cut after 500 ms: about 7 in 3.5 s, never stuck on one.
    let n = etcd.keepalives.load(Ordering::SeqCst);
    assert!((5..=8).contains(&n), "{n} renewals in 3.5 s");
}

#[tokio::test(start_paused = true)]
async fn a_lease_etcd_says_is_gone_is_replaced_by_a_new_one() {
    let etcd = FakeEtcd::new(Renewals::Gone);
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    let mut rx = keeper.subscribe();
    until(&mut rx, |s| s.lost.contains(&LeaseId(1))).await;
    etcd.set(Renewals::AnswerAfter(ms(1)));
    until(&mut rx, |s| s.id.is_some_and(|id| id != LeaseId(1))).await;
    assert_eq!(keeper.status().state, LeaseState::Alive);
}

#[tokio::test(start_paused = true)]
async fn when_etcd_answers_again_the_same_lease_is_alive_again() {
    // What lets a failsafe leader carry on: an unreachable etcd is not a lost lease.
    let etcd = FakeEtcd::new(Renewals::Fail);
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    let mut rx = keeper.subscribe();
    until(&mut rx, |s| s.state == LeaseState::Unconfirmed).await;
    tokio::time::sleep(ms(3_000)).await;
    etcd.set(Renewals::AnswerAfter(ms(5)));
    until(&mut rx, |s| s.state == LeaseState::Alive).await;
    assert_eq!(keeper.status().id, Some(LeaseId(1)));
}

#[tokio::test(start_paused = true)]
async fn ensure_alive_renews_now_and_returns_a_fresh_deadline() {
    let etcd = FakeEtcd::new(Renewals::AnswerAfter(ms(10)));
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    until(&mut keeper.subscribe(), |s| s.id.is_some()).await;
    tokio::time::sleep(ms(200)).await;
    let (id, deadline) = keeper.ensure_alive().await.unwrap();
    let sent = Instant::now() - ms(10);
    assert_eq!(id, LeaseId(1));
    assert_eq!(deadline, sent + ms(1_500));
}

#[tokio::test(start_paused = true)]
async fn a_campaign_and_the_keeper_never_both_grant_a_lease() {
    let etcd = FakeEtcd::new(Renewals::AnswerAfter(ms(1)));
    let keeper = LeaseKeeper::start_with(etcd.clone(), ClusterTiming::default());
    // Called before the keeper's own first grant has run.
    let (id, _) = keeper.ensure_alive().await.unwrap();
    tokio::time::sleep(ms(2_000)).await;
    assert_eq!(id, LeaseId(1));
    assert_eq!(keeper.status().id, Some(LeaseId(1)));
    assert_eq!(etcd.next_id.load(Ordering::SeqCst), 2, "one grant only");
}
