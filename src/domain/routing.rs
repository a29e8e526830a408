//! Routing rules, free of I/O: who may be offered work, which queued task
//! comes first, which agents a task is offered to, how an offer is answered
//! and what a RONA (redirect on no answer) does. The routing engine reads the
//! facts from the store, asks these functions, and writes what they decide.
use super::service::ServiceSettings;
use super::{DomainError, Millis, Modality};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// How a service hands its tasks to agents.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// One offer at a time, to the available agent idle longest for the modality.
    #[default]
    LongestIdle,
    /// Offers to several agents at once; the first to accept wins.
    Broadcast,
    /// No offers: agents take tasks from the waiting list.
    Pickup,
}

impl Distribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::LongestIdle => "longest_idle",
            Distribution::Broadcast => "broadcast",
            Distribution::Pickup => "pickup",
        }
    }
}

/// What an agent says about themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Available,
    Busy,
    Away,
    Offline,
}

impl Presence {
    pub const ALL: [Presence; 4] = [
        Presence::Available,
        Presence::Busy,
        Presence::Away,
        Presence::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Available => "available",
            Presence::Busy => "busy",
            Presence::Away => "away",
            Presence::Offline => "offline",
        }
    }

    pub fn parse(s: &str) -> Result<Presence, DomainError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                DomainError::Invalid(format!(
                    "presence '{}' is not one of available, busy, away, offline",
                    super::clip(s, 40)
                ))
            })
    }
}

/// The presence routing acts on: what the agent set, unless their client has
/// gone away (no event stream and no presence call within the grace period),
/// in which case they are offline whatever they set.
pub fn effective_presence(
    stored: Presence,
    last_seen: Option<Millis>,
    now: Millis,
    grace_ms: Millis,
) -> Presence {
    match last_seen {
        Some(seen) if now - seen <= grace_ms => stored,
        _ => Presence::Offline,
    }
}

/// Whether an agent may be offered anything now: effectively available and
/// not paused after a RONA.
pub fn may_receive_offers(
    stored: Presence,
    last_seen: Option<Millis>,
    rona_until: Option<Millis>,
    now: Millis,
    grace_ms: Millis,
) -> bool {
    effective_presence(stored, last_seen, now, grace_ms) == Presence::Available
        && rona_until.is_none_or(|until| until <= now)
}

/// The rules of one service that routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRouting {
    pub distribution: Distribution,
    pub broadcast_size: u32,
    /// Per modality, in milliseconds.
    pub rona_timeout_ms: [Millis; 3],
    pub rona_reset_ms: Millis,
    pub max_ronas: Option<u32>,
    pub overflow_service: Option<String>,
}

/// Index of a modality in per-modality arrays.
pub fn slot(m: Modality) -> usize {
    match m {
        Modality::Email => 0,
        Modality::Im => 1,
        Modality::Call => 2,
    }
}

impl ServiceRouting {
    pub fn from_settings(s: &ServiceSettings) -> ServiceRouting {
        let t = &s.rona_timeout_secs;
        ServiceRouting {
            distribution: s.distribution,
            broadcast_size: s.broadcast_size.max(1),
            rona_timeout_ms: [t.email, t.im, t.call].map(|secs| Millis::from(secs) * 1000),
            rona_reset_ms: Millis::from(s.rona_reset_secs) * 1000,
            max_ronas: s.max_ronas,
            overflow_service: s.overflow_service.clone(),
        }
    }

    /// When an offer made `now` for a task of `modality` times out.
    pub fn offer_deadline(&self, modality: Modality, now: Millis) -> Millis {
        now + self.rona_timeout_ms[slot(modality)]
    }

    /// How many agents one task is offered to at once.
    pub fn offers_per_task(&self) -> usize {
        match self.distribution {
            Distribution::Broadcast => self.broadcast_size as usize,
            Distribution::LongestIdle => 1,
            Distribution::Pickup => 0,
        }
    }
}

/// A queued task as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedTask {
    pub id: String,
    pub service_id: String,
    pub modality: Modality,
    /// The service's priority plus the task's own.
    pub priority: i64,
    pub arrived_at: Millis,
}

/// The order of the queue across services: higher priority first, then the
/// oldest (a task that comes back after a RONA keeps its place), then by id
/// so that every worker agrees.
pub fn queue_order(a: &QueuedTask, b: &QueuedTask) -> Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.arrived_at.cmp(&b.arrived_at))
        .then_with(|| a.id.cmp(&b.id))
}

/// An agent who may be offered work now (effectively available, not paused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub services: HashSet<String>,
    /// Free places per modality: capacity minus offered and connected tasks.
    pub room: [u32; 3],
    /// Since when the agent has been idle for each modality (the later of
    /// their last task of that modality and becoming available).
    pub idle_since: [Millis; 3],
}

/// An agent who declined a task or let its offer time out, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub agent_id: String,
    pub at: Millis,
}

/// One task offered to one or more agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOffer {
    pub task_id: String,
    pub agents: Vec<String>,
}

/// Chooses offers for `tasks` (any order; they are taken most urgent first).
///
/// Each task goes to agents of its service with room for its modality, the
/// longest idle first (one agent, or up to `broadcast_size`). An agent who
/// refused the task (declined it or let it time out) is passed over while any
/// other agent can take it now (available, with room); when nobody else can,
/// they may be asked again once the refusal is older than the service's offer
/// timeout, so that a customer does not wait for a busy colleague while an
/// agent with room is free.
/// `open` lists agents that already have an open session on a task. Rooms in
/// `candidates` are used up as offers are planned, so capacity holds across
/// the whole batch.
pub fn plan_offers(
    tasks: &[QueuedTask],
    candidates: &mut [Candidate],
    services: &HashMap<String, ServiceRouting>,
    refusals: &HashMap<String, Vec<Refusal>>,
    open: &HashMap<String, HashSet<String>>,
    now: Millis,
) -> Vec<PlannedOffer> {
    let mut order: Vec<&QueuedTask> = tasks.iter().collect();
    order.sort_by(|a, b| queue_order(a, b));
    let mut planned = Vec::new();
    for task in order {
        let Some(rules) = services.get(&task.service_id) else {
            continue;
        };
        let wanted = rules.offers_per_task();
        if wanted == 0 {
            continue;
        }
        let m = slot(task.modality);
        let refused = refusals.get(&task.id);
        let has_refused =
            |agent: &str| refused.is_some_and(|r| r.iter().any(|x| x.agent_id == agent));
        let refused_recently = |agent: &str| {
            refused.is_some_and(|r| {
                r.iter()
                    .any(|x| x.agent_id == agent && now - x.at < rules.rona_timeout_ms[m])
            })
        };
        let already = open.get(&task.id);
        let members: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.services.contains(&task.service_id))
            .filter(|(_, c)| !already.is_some_and(|a| a.contains(&c.id)))
            .map(|(i, _)| i)
            .collect();
        // Agents who have not refused the task and have room for it now:
        // while there are any, refusers are not asked again.
        let others_available = members
            .iter()
            .any(|&i| candidates[i].room[m] > 0 && !has_refused(&candidates[i].id));
        let mut eligible: Vec<usize> = members
            .into_iter()
            .filter(|&i| candidates[i].room[m] > 0)
            .filter(|&i| {
                let id = candidates[i].id.as_str();
                if others_available {
                    !has_refused(id)
                } else {
                    !refused_recently(id)
                }
            })
            .collect();
        if eligible.is_empty() {
            continue;
        }
        eligible.sort_by(|&a, &b| {
            let (a, b) = (&candidates[a], &candidates[b]);
            a.idle_since[m]
                .cmp(&b.idle_since[m])
                .then_with(|| a.id.cmp(&b.id))
        });
        eligible.truncate(wanted);
        let mut agents = Vec::with_capacity(eligible.len());
        for i in eligible {
            candidates[i].room[m] -= 1;
            // Once offered, the agent is no longer idle for this modality.
            candidates[i].idle_since[m] = now;
            agents.push(candidates[i].id.clone());
        }
        planned.push(PlannedOffer {
            task_id: task.id.clone(),
            agents,
        });
    }
    planned
}

/// How an agent answers an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Decline,
}

/// Where the agent's session on the task stands when the answer arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferStatus {
    /// `offered`, `connected`, `wrap_up` or `concluded`.
    pub state: super::SessionState,
    pub result: Option<super::SessionResult>,
    pub end_reason: Option<String>,
    pub expires_at: Option<Millis>,
}

/// What to do with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerDecision {
    /// Connect the task to the agent.
    Accept,
    /// End the offer as declined and route the task on.
    Decline,
    /// The offer's time is up: it ends as a RONA now, and the answer is refused.
    ExpireNow,
    /// The same answer was given before: answer as the first time.
    AlreadyDone,
    /// The offer is over; why, in words, and a stable code.
    Refused { code: &'static str, reason: String },
}

/// Decides what an answer does, given the session as it is now. An accept
/// and a RONA are decided under the same lock, so they can never both win.
pub fn decide_answer(status: &OfferStatus, answer: Answer, now: Millis) -> AnswerDecision {
    use super::SessionResult as R;
    use super::SessionState as S;
    match (status.state, answer) {
        (S::Offered, _) if status.expires_at.is_some_and(|e| now >= e) => AnswerDecision::ExpireNow,
        (S::Offered, Answer::Accept) => AnswerDecision::Accept,
        (S::Offered, Answer::Decline) => AnswerDecision::Decline,
        _ => match (status.result, answer) {
            (Some(R::Accepted), Answer::Accept) => AnswerDecision::AlreadyDone,
            (Some(R::Declined), Answer::Decline) => AnswerDecision::AlreadyDone,
            (Some(R::Accepted), Answer::Decline) => AnswerDecision::Refused {
                code: "offer_accepted",
                reason: "you accepted this offer already: end the task instead".into(),
            },
            (Some(R::Transferred), Answer::Decline) => AnswerDecision::Refused {
                code: "offer_accepted",
                reason: "you accepted this offer already and transferred the task since: it is no longer yours to decline".into(),
            },
            (Some(R::Transferred), Answer::Accept) => AnswerDecision::Refused {
                code: "offer_accepted",
                reason: "you accepted this offer already; the task has been transferred since"
                    .into(),
            },
            (Some(R::Declined), Answer::Accept) => AnswerDecision::Refused {
                code: "offer_declined",
                reason: "you declined this offer".into(),
            },
            (Some(R::Rona), _) => AnswerDecision::Refused {
                code: "offer_expired",
                reason: "this offer expired before it was answered and went to the next agent"
                    .into(),
            },
            (Some(R::Cancelled), _) => AnswerDecision::Refused {
                code: "offer_cancelled",
                reason: "the customer left before the offer was answered".into(),
            },
            (Some(R::Withdrawn), _) => match status.end_reason.as_deref() {
                Some("taken") => AnswerDecision::Refused {
                    code: "offer_taken",
                    reason: "another agent accepted this task first".into(),
                },
                Some("presence") => AnswerDecision::Refused {
                    code: "offer_withdrawn",
                    reason: "this offer was withdrawn because you were not available".into(),
                },
                _ => AnswerDecision::Refused {
                    code: "offer_withdrawn",
                    reason: "this offer was withdrawn".into(),
                },
            },
            _ => AnswerDecision::Refused {
                code: "offer_closed",
                reason: "this offer is no longer open".into(),
            },
        },
    }
}

/// What follows a RONA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AfterRona {
    /// The agent gets no offer until then (or until they set themselves available).
    pub pause_until: Millis,
    /// The service the task moves to, when it has timed out `max_ronas` times.
    pub overflow_to: Option<String>,
}

/// The consequences of an offer timing out, the task's `ronas`-th time
/// (counting this one).
pub fn after_rona(rules: &ServiceRouting, ronas: u32, now: Millis) -> AfterRona {
    let overflow_to = match (rules.max_ronas, &rules.overflow_service) {
        (Some(max), Some(to)) if ronas >= max => Some(to.clone()),
        _ => None,
    };
    AfterRona {
        pause_until: now + rules.rona_reset_ms,
        overflow_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SessionResult, SessionState};

    fn rules(distribution: Distribution) -> ServiceRouting {
        ServiceRouting {
            distribution,
            broadcast_size: 3,
            rona_timeout_ms: [30_000; 3],
            rona_reset_ms: 600_000,
            max_ronas: None,
            overflow_service: None,
        }
    }

    fn task(id: &str, service: &str, priority: i64, arrived: Millis) -> QueuedTask {
        QueuedTask {
            id: id.into(),
            service_id: service.into(),
            modality: Modality::Email,
            priority,
            arrived_at: arrived,
        }
    }

    fn agent(id: &str, services: &[&str], room: u32, idle_since: Millis) -> Candidate {
        Candidate {
            id: id.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            room: [room; 3],
            idle_since: [idle_since; 3],
        }
    }

    fn services(list: &[(&str, Distribution)]) -> HashMap<String, ServiceRouting> {
        list.iter()
            .map(|(id, d)| (id.to_string(), rules(*d)))
            .collect()
    }

    #[test]
    fn presence_needs_a_client_within_the_grace_period() {
        let grace = 60_000;
        assert_eq!(
            effective_presence(Presence::Available, Some(1_000), 50_000, grace),
            Presence::Available
        );
        assert_eq!(
            effective_presence(Presence::Available, Some(1_000), 70_000, grace),
            Presence::Offline
        );
        assert_eq!(
            effective_presence(Presence::Available, None, 0, grace),
            Presence::Offline
        );
        assert_eq!(
            effective_presence(Presence::Busy, Some(0), 0, grace),
            Presence::Busy
        );
        assert!(may_receive_offers(
            Presence::Available,
            Some(0),
            None,
            1,
            grace
        ));
        assert!(!may_receive_offers(Presence::Away, Some(0), None, 1, grace));
        assert!(!may_receive_offers(
            Presence::Available,
            Some(0),
            Some(10),
            5,
            grace
        ));
        assert!(may_receive_offers(
            Presence::Available,
            Some(0),
            Some(10),
            10,
            grace
        ));
        assert!(Presence::parse("lunch").is_err());
    }

    #[test]
    fn the_queue_is_priority_then_age() {
        let mut q = [
            task("new-low", "a", 0, 300),
            task("old-low", "b", 0, 100),
            task("new-high", "b", 5, 400),
        ];
        q.sort_by(queue_order);
        let ids: Vec<&str> = q.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["new-high", "old-low", "new-low"]);
    }

    #[test]
    fn longest_idle_gets_the_most_urgent_task_across_services() {
        let tasks = [
            task("t-sales", "sales", 0, 100),
            task("t-support-urgent", "support", 10, 200),
        ];
        let mut agents = [
            agent("busy-recently", &["support", "sales"], 1, 500),
            agent("idle-longest", &["support", "sales"], 1, 50),
        ];
        let plan = plan_offers(
            &tasks,
            &mut agents,
            &services(&[
                ("support", Distribution::LongestIdle),
                ("sales", Distribution::LongestIdle),
            ]),
            &HashMap::new(),
            &HashMap::new(),
            1_000,
        );
        assert_eq!(
            plan,
            [
                PlannedOffer {
                    task_id: "t-support-urgent".into(),
                    agents: vec!["idle-longest".into()]
                },
                PlannedOffer {
                    task_id: "t-sales".into(),
                    agents: vec!["busy-recently".into()]
                },
            ]
        );
        assert_eq!(agents[0].room[0], 0);
        assert_eq!(agents[1].room[0], 0);
    }

    #[test]
    fn capacity_holds_across_a_batch() {
        let tasks: Vec<QueuedTask> = (0..5).map(|i| task(&format!("t{i}"), "s", 0, i)).collect();
        let mut agents = [agent("a", &["s"], 2, 0), agent("b", &["s"], 1, 10)];
        let plan = plan_offers(
            &tasks,
            &mut agents,
            &services(&[("s", Distribution::LongestIdle)]),
            &HashMap::new(),
            &HashMap::new(),
            1_000,
        );
        assert_eq!(plan.len(), 3, "{plan:?}");
        let to_a = plan.iter().filter(|p| p.agents == ["a"]).count();
        assert_eq!(to_a, 2);
        assert!(agents.iter().all(|a| a.room[0] == 0));
    }

    #[test]
    fn rooms_are_per_modality() {
        let mut chat = task("chat", "s", 0, 0);
        chat.modality = Modality::Im;
        let mut a = agent("a", &["s"], 0, 0);
        a.room[slot(Modality::Im)] = 1;
        let mut agents = [a];
        let plan = plan_offers(
            &[task("mail", "s", 0, 0), chat],
            &mut agents,
            &services(&[("s", Distribution::LongestIdle)]),
            &HashMap::new(),
            &HashMap::new(),
            1,
        );
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].task_id, "chat");
    }

    #[test]
    fn broadcast_offers_to_several_and_pickup_to_none() {
        let mut agents: Vec<Candidate> = (0..5)
            .map(|i| agent(&format!("a{i}"), &["b", "p"], 1, i))
            .collect();
        let plan = plan_offers(
            &[task("tb", "b", 0, 0), task("tp", "p", 0, 0)],
            &mut agents,
            &services(&[("b", Distribution::Broadcast), ("p", Distribution::Pickup)]),
            &HashMap::new(),
            &HashMap::new(),
            1,
        );
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].agents, ["a0", "a1", "a2"]);
    }

    #[test]
    fn refusers_are_passed_over_while_others_are_available() {
        let refusals = HashMap::from([(
            "t".to_string(),
            vec![Refusal {
                agent_id: "declined".into(),
                at: 0,
            }],
        )]);
        // Another agent is available but full: the refuser, who has room,
        // is asked again once the offer timeout has passed, not at once.
        let rules = services(&[("s", Distribution::LongestIdle)]);
        for (now, asked) in [(10_000, false), (31_000, true)] {
            let mut agents = [agent("declined", &["s"], 1, 0), agent("full", &["s"], 0, 0)];
            let plan = plan_offers(
                &[task("t", "s", 0, 0)],
                &mut agents,
                &rules,
                &refusals,
                &HashMap::new(),
                now,
            );
            assert_eq!(!plan.is_empty(), asked, "at {now}: {plan:?}");
        }
        // Another with room gets it.
        let mut agents = [
            agent("declined", &["s"], 1, 0),
            agent("other", &["s"], 1, 99),
        ];
        let plan = plan_offers(
            &[task("t", "s", 0, 0)],
            &mut agents,
            &rules,
            &refusals,
            &HashMap::new(),
            100_000,
        );
        assert_eq!(plan[0].agents, ["other"]);
        // Nobody else at all: the refuser may be asked again, but not at once.
        let mut agents = [agent("declined", &["s"], 1, 0)];
        let soon = plan_offers(
            &[task("t", "s", 0, 0)],
            &mut agents,
            &rules,
            &refusals,
            &HashMap::new(),
            10_000,
        );
        assert!(soon.is_empty());
        let later = plan_offers(
            &[task("t", "s", 0, 0)],
            &mut agents,
            &rules,
            &refusals,
            &HashMap::new(),
            31_000,
        );
        assert_eq!(later[0].agents, ["declined"]);
    }

    #[test]
    fn agents_with_an_open_session_on_the_task_are_not_asked_twice() {
        let open = HashMap::from([("t".to_string(), HashSet::from(["a0".to_string()]))]);
        let mut agents = [agent("a0", &["s"], 1, 0), agent("a1", &["s"], 1, 5)];
        let plan = plan_offers(
            &[task("t", "s", 0, 0)],
            &mut agents,
            &services(&[("s", Distribution::LongestIdle)]),
            &HashMap::new(),
            &open,
            1,
        );
        assert_eq!(plan[0].agents, ["a1"]);
    }

    fn offered(expires_at: Millis) -> OfferStatus {
        OfferStatus {
            state: SessionState::Offered,
            result: None,
            end_reason: None,
            expires_at: Some(expires_at),
        }
    }

    fn ended(result: SessionResult, reason: Option<&str>) -> OfferStatus {
        OfferStatus {
            state: SessionState::Concluded,
            result: Some(result),
            end_reason: reason.map(String::from),
            expires_at: Some(0),
        }
    }

    #[test]
    fn answers_before_the_deadline_count_and_after_it_expire() {
        assert_eq!(
            decide_answer(&offered(100), Answer::Accept, 99),
            AnswerDecision::Accept
        );
        assert_eq!(
            decide_answer(&offered(100), Answer::Decline, 99),
            AnswerDecision::Decline
        );
        assert_eq!(
            decide_answer(&offered(100), Answer::Accept, 100),
            AnswerDecision::ExpireNow
        );
    }

    #[test]
    fn answering_twice_is_idempotent_and_late_answers_say_why() {
        let accepted = OfferStatus {
            state: SessionState::Connected,
            result: Some(SessionResult::Accepted),
            end_reason: None,
            expires_at: Some(0),
        };
        assert_eq!(
            decide_answer(&accepted, Answer::Accept, 5),
            AnswerDecision::AlreadyDone
        );
        assert_eq!(
            decide_answer(
                &ended(SessionResult::Declined, Some("declined")),
                Answer::Decline,
                5
            ),
            AnswerDecision::AlreadyDone
        );
        let code = |s: &OfferStatus, a| match decide_answer(s, a, 5) {
            AnswerDecision::Refused { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(&ended(SessionResult::Rona, Some("timeout")), Answer::Accept),
            "offer_expired"
        );
        assert_eq!(
            code(
                &ended(SessionResult::Withdrawn, Some("taken")),
                Answer::Accept
            ),
            "offer_taken"
        );
        assert_eq!(
            code(&ended(SessionResult::Cancelled, None), Answer::Accept),
            "offer_cancelled"
        );
        assert_eq!(
            code(&ended(SessionResult::Declined, None), Answer::Accept),
            "offer_declined"
        );
        assert_eq!(code(&accepted, Answer::Decline), "offer_accepted");
        // Accepted, then transferred: said so, not a vague "closed".
        let transferred = ended(SessionResult::Transferred, Some("transfer"));
        assert_eq!(code(&transferred, Answer::Accept), "offer_accepted");
        assert_eq!(code(&transferred, Answer::Decline), "offer_accepted");
        // Never advice that cannot be followed: the task is no longer theirs to end.
        match decide_answer(&transferred, Answer::Decline, 0) {
            AnswerDecision::Refused { reason, .. } => {
                assert!(reason.contains("transferred"), "{reason}");
                assert!(!reason.contains("end the task"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rona_pauses_the_agent_and_overflows_after_max() {
        let mut r = rules(Distribution::LongestIdle);
        assert_eq!(after_rona(&r, 5, 1_000).overflow_to, None);
        assert_eq!(after_rona(&r, 5, 1_000).pause_until, 601_000);
        r.max_ronas = Some(2);
        assert_eq!(after_rona(&r, 1, 0).overflow_to, None);
        r.overflow_service = Some("backoffice".into());
        assert_eq!(after_rona(&r, 1, 0).overflow_to, None);
        assert_eq!(
            after_rona(&r, 2, 0).overflow_to.as_deref(),
            Some("backoffice")
        );
    }

    #[test]
    fn deadlines_follow_the_modality() {
        let mut r = rules(Distribution::LongestIdle);
        r.rona_timeout_ms = [120_000, 30_000, 20_000];
        assert_eq!(r.offer_deadline(Modality::Call, 1_000), 21_000);
        assert_eq!(r.offer_deadline(Modality::Email, 0), 120_000);
    }
}
