//! How the mail of one ingestion batch finds its conversations, free of
//! I/O: the stored messages its references name are read once for the
//! whole batch, and the batch's own mail joins them as it is decided, so a
//! reply in the same batch as the mail it answers threads onto it.
use super::Millis;
use super::ingest::ThreadMatch;
use super::task::TaskState;
use std::collections::HashMap;

/// A message a mail may reply to: it has a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub message_id: String,
    pub conversation_id: String,
    pub received_at: Millis,
}

/// Where a conversation's newest task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestTask {
    pub conversation_id: String,
    pub task_id: String,
    pub state: TaskState,
}

/// The newest of the anchors seen under one Message-ID, by `at`: the
/// time received, then the batch order (0 for stored mail), so the
/// batch's own mail (received now) comes after stored mail received
/// earlier, and in batch order among itself.
#[derive(Debug, Clone)]
struct Newest {
    at: (Millis, u64),
    conversation_id: String,
}

/// The threading of one batch: the service's own messages first; else a
/// reply of ours sent by any service (the task moved there); never another
/// service's mail otherwise.
#[derive(Debug, Default)]
pub struct BatchThreading {
    own: HashMap<String, Newest>,
    ours_elsewhere: HashMap<String, Newest>,
    latest: HashMap<String, (String, TaskState)>,
    /// Batch order of the mail recorded so far.
    next: u64,
}

fn keep_newest(map: &mut HashMap<String, Newest>, message_id: String, n: Newest) {
    match map.get(&message_id) {
        Some(old) if old.at >= n.at => {}
        _ => {
            map.insert(message_id, n);
        }
    }
}

impl BatchThreading {
    /// From what is stored: the service's messages and our replies of any
    /// service among those the batch refers to, and the newest task of
    /// their conversations.
    pub fn new(own: Vec<Anchor>, ours_elsewhere: Vec<Anchor>, latest: Vec<LatestTask>) -> Self {
        let mut t = BatchThreading::default();
        for (anchors, map) in [(own, &mut t.own), (ours_elsewhere, &mut t.ours_elsewhere)] {
            for a in anchors {
                let n = Newest {
                    at: (a.received_at, 0),
                    conversation_id: a.conversation_id,
                };
                keep_newest(map, a.message_id, n);
            }
        }
        t.latest = latest
            .into_iter()
            .map(|l| (l.conversation_id, (l.task_id, l.state)))
            .collect();
        t
    }

    /// The conversation of the newest message `refs` name, with its newest
    /// task; `None` when no referenced message has a conversation.
    pub fn thread(&self, refs: &[String]) -> Option<ThreadMatch> {
        let newest = |map: &HashMap<String, Newest>| {
            refs.iter()
                .filter_map(|r| map.get(r))
                .max_by_key(|n| n.at)
                .map(|n| n.conversation_id.clone())
        };
        let conversation_id = newest(&self.own).or_else(|| newest(&self.ours_elsewhere))?;
        let latest_task = self.latest.get(&conversation_id).cloned();
        Some(ThreadMatch {
            conversation_id,
            latest_task,
        })
    }

    /// A mail of the batch stored in `conversation_id` at `now`: later mail
    /// of the batch that refers to it joins that conversation.
    pub fn stored(&mut self, message_id: Option<&str>, conversation_id: &str, now: Millis) {
        self.next += 1;
        if let Some(id) = message_id {
            let n = Newest {
                at: (now, self.next),
                conversation_id: conversation_id.to_string(),
            };
            keep_newest(&mut self.own, id.to_string(), n);
        }
    }

    /// A task created by the batch is its conversation's newest (queued):
    /// it arrived now, later than the stored ones (as the database would
    /// order them, unless a worker's clock ran ahead).
    pub fn task_created(&mut self, conversation_id: &str, task_id: &str) {
        self.latest.insert(
            conversation_id.to_string(),
            (task_id.to_string(), TaskState::Queued),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(m: &str, c: &str, at: Millis) -> Anchor {
        Anchor {
            message_id: m.into(),
            conversation_id: c.into(),
            received_at: at,
        }
    }

    fn refs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_newest_referenced_message_of_the_service_wins() {
        let t = BatchThreading::new(
            vec![anchor("a", "c1", 10), anchor("b", "c2", 20)],
            vec![anchor("z", "c9", 99)],
            vec![LatestTask {
                conversation_id: "c2".into(),
                task_id: "t2".into(),
                state: TaskState::Connected,
            }],
        );
        let m = t.thread(&refs(&["a", "b", "z"])).expect("a thread");
        assert_eq!(m.conversation_id, "c2");
        assert_eq!(m.latest_task, Some(("t2".into(), TaskState::Connected)));
        assert_eq!(t.thread(&refs(&["a"])).unwrap().latest_task, None);
        assert_eq!(t.thread(&refs(&["x"])), None);
        assert_eq!(t.thread(&[]), None);
    }

    #[test]
    fn our_reply_of_another_service_is_second_choice() {
        let t = BatchThreading::new(
            vec![anchor("a", "c1", 10)],
            vec![anchor("z", "c9", 99)],
            vec![],
        );
        assert_eq!(t.thread(&refs(&["z"])).unwrap().conversation_id, "c9");
        assert_eq!(t.thread(&refs(&["z", "a"])).unwrap().conversation_id, "c1");
    }

    #[test]
    fn one_message_id_stored_twice_keeps_its_newest_conversation() {
        let t = BatchThreading::new(
            vec![anchor("a", "new", 30), anchor("a", "old", 10)],
            vec![],
            vec![],
        );
        assert_eq!(t.thread(&refs(&["a"])).unwrap().conversation_id, "new");
    }

    #[test]
    fn the_batchs_own_mail_threads_later_mail_of_the_batch() {
        let mut t = BatchThreading::new(vec![anchor("a", "c1", 50)], vec![], vec![]);
        // A new mail opens a conversation with a task; a reply to it in the
        // same batch finds both.
        t.stored(Some("first"), "c7", 50);
        t.task_created("c7", "t7");
        let m = t.thread(&refs(&["a", "first"])).expect("a thread");
        assert_eq!(
            m.conversation_id, "c7",
            "arrived now: newer than anything stored"
        );
        assert_eq!(m.latest_task, Some(("t7".into(), TaskState::Queued)));
        // Later in the batch beats earlier in the batch.
        t.stored(Some("second"), "c8", 50);
        assert_eq!(
            t.thread(&refs(&["second", "first"]))
                .unwrap()
                .conversation_id,
            "c8"
        );
        // A mail without a Message-ID cannot be referred to.
        t.stored(None, "c9", 50);
        assert_eq!(t.thread(&refs(&["second"])).unwrap().conversation_id, "c8");
    }
}
