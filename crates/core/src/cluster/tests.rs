use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn node(name: &str, zone: &str, term: u64, seq: u64) -> Candidate {
    Candidate {
        node: name.into(),
        zone: zone.into(),
        applied: Position { term, seq },
        health: Health::Healthy,
        hands_over_to: None,
    }
}

fn input(me: Candidate, members: Vec<Candidate>) -> CampaignInput {
    CampaignInput {
        me,
        members,
        leader: None,
        failed_leader_zone: None,
        failsafe_promise: false,
    }
}

#[test]
fn nobody_campaigns_while_a_leader_holds_the_key() {
    let mut i = input(node("b", "z2", 7, 10), vec![node("c", "z3", 7, 9)]);
    i.leader = Some(LeaderSeen {
        node: "a".into(),
        term: Term(7),
    });
    let d = decide_campaign(&i);
    assert_eq!(
        d,
        CampaignDecision::Wait {
            reason: "a leads (term 7)".into()
        }
    );
}

#[test]
fn the_most_caught_up_standby_campaigns_and_the_others_wait() {
    let b = node("b", "z2", 7, 12);
    let c = node("c", "z3", 7, 10);
    let all = vec![b.clone(), c.clone()];
    assert!(decide_campaign(&input(b.clone(), all.clone())).should_campaign());
    let d = decide_campaign(&input(c, all));
    assert_eq!(
        d.reason(),
        "b (zone z2) has applied more: 7/12 against this node's 7/10"
    );
    assert!(!d.should_campaign());
}

#[test]
fn a_later_term_beats_a_longer_history_of_an_older_term() {
    let b = node("b", "z2", 8, 1);
    let c = node("c", "z3", 7, 500);
    assert!(decide_campaign(&input(b.clone(), vec![b.clone(), c.clone()])).should_campaign());
    assert!(!decide_campaign(&input(c.clone(), vec![b, c])).should_campaign());
}

#[test]
fn equally_caught_up_standbys_are_ordered_by_name() {
    let b = node("b", "z2", 7, 12);
    let c = node("c", "z3", 7, 12);
    assert!(decide_campaign(&input(b.clone(), vec![c.clone()])).should_campaign());
    let d = decide_campaign(&input(c, vec![b]));
    assert_eq!(
        d.reason(),
        "b (zone z2) is as caught up (7/12) and its name sorts first"
    );
}

#[test]
fn an_unhealthy_member_is_not_a_candidate_and_does_not_campaign() {
    let mut b = node("b", "z2", 7, 20);
    b.health = Health::Unhealthy("disk full".into());
    let c = node("c", "z3", 7, 10);
    assert!(decide_campaign(&input(c.clone(), vec![b.clone()])).should_campaign());
    assert_eq!(
        decide_campaign(&input(b, vec![c])).reason(),
        "this node is not healthy: disk full"
    );
}

#[test]
fn a_standby_in_the_failed_leaders_zone_waits_for_a_healthy_one_elsewhere() {
    // b is further ahead but shares the failed leader's zone: c in another zone takes over.
    let b = node("b", "z1", 7, 20);
    let c = node("c", "z2", 7, 10);
    let mut ib = input(b.clone(), vec![c.clone()]);
    ib.failed_leader_zone = Some("z1".into());
    let d = decide_campaign(&ib);
    assert_eq!(
        d.reason(),
        "the failed leader was in this node's zone z1, and c in zone z2 is a healthy candidate"
    );
    let mut ic = input(c, vec![b]);
    ic.failed_leader_zone = Some("z1".into());
    assert!(decide_campaign(&ic).should_campaign());
}

#[test]
fn the_failed_leaders_zone_is_used_when_no_other_zone_has_a_healthy_candidate() {
    let b = node("b", "z1", 7, 20);
    let mut c = node("c", "z2", 7, 30);
    c.health = Health::Unhealthy("diverged".into());
    let mut i = input(b, vec![c]);
    i.failed_leader_zone = Some("z1".into());
    assert!(decide_campaign(&i).should_campaign());
}

#[test]
fn a_stale_registry_entry_for_myself_is_ignored() {
    // The registry still shows b at 7/1; b's own fresh position is 7/40.
    let b = node("b", "z2", 7, 40);
    let c = node("c", "z3", 7, 30);
    let i = input(b, vec![node("b", "z2", 7, 1), c]);
    assert!(decide_campaign(&i).should_campaign());
}

#[test]
fn a_failsafe_promise_keeps_a_standby_from_campaigning() {
    let mut i = input(node("b", "z2", 7, 10), vec![]);
    i.failsafe_promise = true;
    assert!(!decide_campaign(&i).should_campaign());
}

#[test]
fn a_lone_standby_campaigns() {
    let d = decide_campaign(&input(node("b", "z2", 0, 0), vec![]));
    assert_eq!(
        d,
        CampaignDecision::Campaign {
            reason: "no leader; this node (zone z2, applied 0/0) is the most caught-up of 1 \
                     healthy candidate"
                .into()
        }
    );
}

#[test]
fn the_fence_deadline_is_the_renewal_send_time_plus_ttl_minus_margin() {
    assert_eq!(fence_deadline(ms(1_000), ms(2_000), ms(500)), ms(2_500));
    assert!(!must_stop_writing(ms(1_000), ms(2_000), ms(500), ms(2_499)));
    assert!(must_stop_writing(ms(1_000), ms(2_000), ms(500), ms(2_500)));
    // A margin larger than the TTL fences at once rather than wrapping around.
    assert!(must_stop_writing(
        ms(1_000),
        ms(2_000),
        ms(3_000),
        ms(1_000)
    ));
}

fn failsafe(members: &[&str], confirmations: &[(&str, u64)], now: u64) -> FailsafeInput<Duration> {
    FailsafeInput {
        etcd_reachable: false,
        my_term: Some(Term(7)),
        members_last_known: members.iter().map(|s| s.to_string()).collect(),
        confirmations: confirmations
            .iter()
            .map(|(n, at)| (n.to_string(), ms(*at)))
            .collect(),
        ttl: ms(2_000),
        margin: ms(500),
        now: ms(now),
    }
}

#[test]
fn failsafe_is_not_needed_while_etcd_answers_or_for_a_standby() {
    let mut i = failsafe(&["b"], &[], 0);
    i.etcd_reachable = true;
    assert_eq!(decide_failsafe(&i), FailsafeDecision::NotNeeded);
    let mut i = failsafe(&["b"], &[], 0);
    i.my_term = None;
    assert_eq!(decide_failsafe(&i), FailsafeDecision::NotNeeded);
}

#[test]
fn a_leader_confirmed_by_every_member_keeps_serving_until_the_earliest_confirmation_runs_out() {
    let i = failsafe(&["b", "c"], &[("b", 1_000), ("c", 1_200)], 1_300);
    assert_eq!(
        decide_failsafe(&i),
        FailsafeDecision::KeepServing {
            until: ms(2_500),
            reason: "etcd is unreachable; all 2 other members confirmed this leader (term 7)"
                .into()
        }
    );
}

#[test]
fn a_leader_stops_writing_when_one_member_did_not_confirm() {
    let i = failsafe(&["b", "c"], &[("b", 1_000)], 1_300);
    assert_eq!(
        decide_failsafe(&i),
        FailsafeDecision::StopWriting {
            reason: "etcd is unreachable and c did not confirm this leader (term 7) within the \
                     lease TTL"
                .into()
        }
    );
}

#[test]
fn a_confirmation_older_than_the_ttl_minus_margin_does_not_count() {
    let i = failsafe(&["b"], &[("b", 1_000)], 2_500);
    assert!(matches!(
        decide_failsafe(&i),
        FailsafeDecision::StopWriting { .. }
    ));
}

#[test]
fn a_leader_with_no_other_member_stops_writing_without_etcd() {
    let i = failsafe(&[], &[], 0);
    assert!(matches!(
        decide_failsafe(&i),
        FailsafeDecision::StopWriting { .. }
    ));
}

fn request(term: u64) -> FailsafeRequest {
    FailsafeRequest {
        version: 1,
        leader: "a".into(),
        term: Term(term),
        members: vec!["b".into()],
    }
}

fn confirm_input(term: u64, etcd_reachable: bool, leader: Option<(&str, u64)>) -> ConfirmInput {
    ConfirmInput {
        request: request(term),
        etcd_reachable,
        leader_in_etcd: leader.map(|(n, t)| LeaderSeen {
            node: n.into(),
            term: Term(t),
        }),
        highest_term_seen: Term(7),
        i_lead: false,
    }
}

#[test]
fn a_standby_without_etcd_confirms_the_current_term_but_not_an_older_one() {
    assert_eq!(confirm_leader(&confirm_input(7, false, None)), Ok(()));
    assert_eq!(
        confirm_leader(&confirm_input(6, false, None)),
        Err("term 6 is older than term 7 seen by this node".into())
    );
}

#[test]
fn a_standby_that_reaches_etcd_confirms_only_the_leader_etcd_shows() {
    assert_eq!(
        confirm_leader(&confirm_input(7, true, Some(("a", 7)))),
        Ok(())
    );
    assert_eq!(
        confirm_leader(&confirm_input(7, true, None)),
        Err("etcd answers and shows no leader".into())
    );
    assert_eq!(
        confirm_leader(&confirm_input(7, true, Some(("c", 9)))),
        Err("etcd shows c as leader (term 9)".into())
    );
}

#[test]
fn a_leader_does_not_confirm_another() {
    let mut i = confirm_input(7, false, None);
    i.i_lead = true;
    assert!(confirm_leader(&i).is_err());
}

#[test]
fn a_failsafe_promise_lasts_one_ttl_from_the_confirmation() {
    assert!(!failsafe_promise_holds(None, ms(2_000), ms(0)));
    assert!(failsafe_promise_holds(
        Some(ms(1_000)),
        ms(2_000),
        ms(2_999)
    ));
    assert!(!failsafe_promise_holds(
        Some(ms(1_000)),
        ms(2_000),
        ms(3_000)
    ));
}

#[test]
fn failsafe_messages_round_trip_as_json() {
    let a = FailsafeAnswer {
        version: 1,
        node: "b".into(),
        term: Term(7),
        confirmed: true,
        refused_because: None,
    };
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(
        json,
        r#"{"version":1,"node":"b","term":7,"confirmed":true}"#
    );
    assert_eq!(serde_json::from_str::<FailsafeAnswer>(&json).unwrap(), a);
    let r = serde_json::to_string(&request(7)).unwrap();
    assert_eq!(r, r#"{"version":1,"leader":"a","term":7,"members":["b"]}"#);
}

#[test]
fn a_switchover_makes_its_successor_campaign_even_when_another_is_as_caught_up() {
    let mut old = node("a", "z1", 7, 10);
    old.hands_over_to = Some("c".into());
    old.health = Health::Unhealthy("handing over".into());
    // b sorts first and is as caught up: without the switchover it would be chosen.
    let b = node("b", "z2", 7, 10);
    let c = node("c", "z3", 7, 10);
    let d = decide_campaign(&input(b.clone(), vec![old.clone(), c.clone()]));
    assert_eq!(
        d,
        CampaignDecision::Wait {
            reason: "a hands over to c (switchover)".into()
        }
    );
    let d = decide_campaign(&input(c.clone(), vec![old.clone(), b.clone()]));
    assert!(d.should_campaign(), "{d:?}");
    // A successor that is gone or unhealthy: the usual rule (b is best).
    let mut sick = c.clone();
    sick.health = Health::Unhealthy("down".into());
    let d = decide_campaign(&input(b, vec![old, sick]));
    assert!(d.should_campaign(), "{d:?}");
}
