//! The one place a bounded mailbox is offered a message: try first, then apply the policy,
//! and count what is queued on the stage's probe.
//!
//! actix's `do_send` queues past a mailbox's capacity, so it never moves audio; `try_send`
//! refuses when full and `send` waits for room. Like vector's buffer sender, callers say
//! which policy applies and match on one [`Offer`], instead of each writing
//! try_send-then-policy-then-probe by hand.

use crate::counters::StageProbe;
use crate::settings::BackpressurePolicy;
use actix::dev::ToEnvelope;
use actix::prelude::*;
use std::future::Future;
use std::pin::Pin;

/// A stage's address with the probe that counts its queue.
pub struct StageSender<A: Actor> {
    addr: Addr<A>,
    probe: StageProbe,
}

impl<A: Actor> std::fmt::Debug for StageSender<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSender")
            .field("probe", &self.probe)
            .finish()
    }
}

impl<A: Actor> Clone for StageSender<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            probe: self.probe.clone(),
        }
    }
}

/// Waits until a full mailbox took the message; `Err` if the stage stopped meanwhile.
pub type Waiting = Pin<Box<dyn Future<Output = Result<(), MailboxError>>>>;

/// What became of an offered message.
pub enum Offer<M> {
    /// Queued now.
    Queued,
    /// The mailbox was full and the policy is `Block`: queued once this resolves. The
    /// caller stops taking input until then; that is how backpressure travels upstream.
    Wait(Waiting),
    /// The mailbox was full and the policy is `DropNewest`: here is the message back.
    Dropped(M),
    /// The stage has stopped.
    Closed,
}

impl<A: Actor> StageSender<A> {
    /// Sends to `addr`, counting on `probe`.
    pub fn new(addr: Addr<A>, probe: StageProbe) -> Self {
        Self { addr, probe }
    }

    /// The stage's address.
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    /// Offers `msg` under `policy`.
    pub fn offer<M>(&self, msg: M, policy: BackpressurePolicy) -> Offer<M>
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        match self.addr.try_send(msg) {
            Ok(()) => {
                self.probe.queued();
                Offer::Queued
            }
            Err(SendError::Closed(_)) => Offer::Closed,
            Err(SendError::Full(msg)) => match policy {
                BackpressurePolicy::DropNewest => Offer::Dropped(msg),
                BackpressurePolicy::Block => Offer::Wait(self.wait_for_room(msg)),
            },
        }
    }

    /// Queues `msg` once there is room, however long that takes (the message is counted as
    /// queued from now). The returned future owns what it needs: it may be spawned so the
    /// message arrives even if the caller stops meanwhile.
    pub fn wait_for_room<M>(&self, msg: M) -> Waiting
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.probe.queued();
        let send = self.addr.send(msg);
        Box::pin(send)
    }
}
