//! An in-memory [`JobQueue`] with SQS semantics, for unit tests of handler logic.
//!
//! Visibility timeouts, receive counts, receipts that change on every receive and
//! at-least-once redelivery behave like SQS and the local spool, so handler tests exercise
//! the same corner cases (a job not acked in time comes back). Time is
//! `tokio::time::Instant`, so tests can use `tokio::time::pause()` to skip over timeouts.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    DEFAULT_MAX_MESSAGE_BYTES, FailedEntry, JobQueue, MAX_DELAY, QueueError, ReceivedMessage,
    clamp_receive_max,
};

/// How often a long poll re-checks for messages.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Message {
    id: String,
    body: String,
    receive_count: u32,
    visible_at: Instant,
    /// The receipt of the latest receive; older receipts are refused.
    receipt: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by send order, so redelivery keeps FIFO-ish order like the local spool.
    messages: BTreeMap<u64, Message>,
    next_seq: u64,
    next_receipt: u64,
}

#[derive(Debug)]
pub struct MemoryQueue {
    name: String,
    max_message_bytes: usize,
    state: Mutex<State>,
}

impl MemoryQueue {
    pub fn new(name: impl Into<String>) -> Self {
        MemoryQueue {
            name: name.into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            state: Mutex::new(State::default()),
        }
    }

    /// Override the 256 KiB message limit (to test oversize handling cheaply).
    pub fn with_max_message_bytes(mut self, limit: usize) -> Self {
        self.max_message_bytes = limit;
        self
    }

    /// Messages not yet acked, visible or in flight (for assertions in tests).
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().messages.is_empty()
    }

    /// Bodies of every message not yet acked, in send order.
    pub fn bodies(&self) -> Vec<String> {
        self.lock()
            .messages
            .values()
            .map(|m| m.body.clone())
            .collect()
    }

    /// Poisoning only means a test thread panicked while holding the lock; every mutation
    /// leaves the state consistent, so carry on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_size(&self, body: &str) -> Result<(), QueueError> {
        super::check_message_size(body, self.max_message_bytes)
    }

    fn push(&self, body: &str) -> String {
        self.push_at(body, Instant::now())
    }

    /// Queue `body`, invisible until `visible_at`.
    fn push_at(&self, body: &str, visible_at: Instant) -> String {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let id = format!("mem-{seq}");
        state.messages.insert(
            seq,
            Message {
                id: id.clone(),
                body: body.to_string(),
                receive_count: 0,
                visible_at,
                receipt: None,
            },
        );
        id
    }

    fn try_receive(&self, max: usize, visibility: Duration) -> Vec<ReceivedMessage> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut out = Vec::new();
        let mut next_receipt = state.next_receipt;
        for message in state.messages.values_mut() {
            if out.len() == max {
                break;
            }
            if message.visible_at > now {
                continue;
            }
            next_receipt += 1;
            let receipt = format!("{}#{next_receipt}", message.id);
            message.receive_count += 1;
            message.visible_at = now + visibility;
            message.receipt = Some(receipt.clone());
            out.push(ReceivedMessage {
                id: message.id.clone(),
                receipt,
                body: message.body.clone(),
                receive_count: message.receive_count,
            });
        }
        state.next_receipt = next_receipt;
        out
    }

    fn find_by_receipt<'a>(state: &'a mut State, receipt: &str) -> Option<(u64, &'a mut Message)> {
        state
            .messages
            .iter_mut()
            .find(|(_, m)| m.receipt.as_deref() == Some(receipt))
            .map(|(seq, m)| (*seq, m))
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, body: &str) -> Result<String, QueueError> {
        self.check_size(body)?;
        Ok(self.push(body))
    }

    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        self.check_size(body)?;
        Ok(self.push_at(body, Instant::now() + delay.min(MAX_DELAY)))
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<FailedEntry>, QueueError> {
        let mut failed = Vec::new();
        for (index, body) in bodies.iter().enumerate() {
            match self.check_size(body) {
                Ok(()) => {
                    self.push(body);
                }
                Err(e) => failed.push(FailedEntry {
                    index,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(failed)
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = clamp_receive_max(max);
        let deadline = Instant::now() + wait;
        loop {
            let got = self.try_receive(max, visibility);
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let mut state = self.lock();
        let seq = Self::find_by_receipt(&mut state, receipt)
            .map(|(seq, _)| seq)
            .ok_or_else(|| QueueError::InvalidReceipt(receipt.to_string()))?;
        state.messages.remove(&seq);
        Ok(())
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let mut state = self.lock();
        let (_, message) = Self::find_by_receipt(&mut state, receipt)
            .ok_or_else(|| QueueError::InvalidReceipt(receipt.to_string()))?;
        message.visible_at = Instant::now() + visibility;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn redelivers_after_visibility_timeout_with_paused_time() {
        let q = MemoryQueue::new("q");
        q.send("a").await.unwrap();
        let first = q
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        assert!(
            q.receive(10, Duration::ZERO, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        let again = q
            .receive(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].receive_count, 2);
        assert_ne!(again[0].receipt, first[0].receipt);
        // The stale receipt no longer acks; the fresh one does.
        assert!(matches!(
            q.ack(&first[0].receipt).await,
            Err(QueueError::InvalidReceipt(_))
        ));
        q.ack(&again[0].receipt).await.unwrap();
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_message_waits_its_delay_and_no_longer_than_the_maximum() {
        let q = MemoryQueue::new("q");
        q.send_delayed("later", Duration::from_secs(60))
            .await
            .unwrap();
        q.send_delayed("capped", Duration::from_secs(3600))
            .await
            .unwrap();
        q.send("now").await.unwrap();
        let receive = || q.receive(10, Duration::ZERO, Duration::from_secs(30));
        let got = receive().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "now");
        q.ack(&got[0].receipt).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(receive().await.unwrap().is_empty());
        tokio::time::advance(Duration::from_secs(2)).await;
        let got = receive().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].body.as_str(), got[0].receive_count), ("later", 1));
        q.ack(&got[0].receipt).await.unwrap();
        tokio::time::advance(MAX_DELAY).await;
        let got = receive().await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "capped");
    }

    #[tokio::test]
    async fn oversize_is_refused() {
        let q = MemoryQueue::new("q").with_max_message_bytes(4);
        assert!(matches!(
            q.send("12345").await,
            Err(QueueError::MessageTooLarge { size: 5, limit: 4 })
        ));
        let failed = q
            .send_batch(&["1".into(), "12345".into(), "2".into()])
            .await
            .unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].index, 1);
        assert_eq!(q.bodies(), vec!["1".to_string(), "2".to_string()]);
    }
}
