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

    /// Queues `msg` now, past the mailbox's capacity by at most this one message, and
    /// returns a future that resolves once the stage has handled it: the caller waits on
    /// it and takes no more input meanwhile, so each sender adds at most one message beyond
    /// the bound (the `+ 1` in the documented worst case).
    ///
    /// Why now rather than when room appears: a message held back until room appears could
    /// be overtaken by another sender's (a flush after the audio it must follow), and would
    /// be lost if the caller stopped. A fresh sender handle is used because actix refuses a
    /// handle whose last send filled the mailbox until the stage has caught up.
    pub fn wait_for_room<M>(&self, msg: M) -> Waiting
    where
        M: Message<Result = ()> + Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.probe.queued();
        let send = self.addr.clone().send(msg);
        Box::pin(send)
    }
}
