//! After the gate: settling in `after` mode once the origin's status is known, receipt
//! headers, and `delivery_failed` ledger lines for paid requests the client did not get.

use crate::payment::{
    Accepted, FailurePolicy, PaymentEnv, PaymentError, Payments, Rejection, Stage,
};

/// The `delivery_failed` reason when the origin failed after the payment settled.
const ORIGIN_FAILED: &str = "origin_failed_after_settlement";
/// The `delivery_failed` reason when the client went away before the response was complete.
pub const CLIENT_GONE: &str = "client_disconnected";

impl Payments {
    /// Called with the origin's status before any body byte is sent. Settles in `after` mode
    /// when the status is below 400. Returns headers to add, or the reply that replaces the
    /// origin's response.
    pub async fn on_response(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        status: u16,
    ) -> Result<Vec<(&'static str, String)>, Rejection> {
        if a.stage == Stage::Verified {
            if status >= 400 {
                // Not served: no settlement. The reservation (or the channel's turn) goes
                // back before the client reads the error.
                self.metrics
                    .payments
                    .with_label_values(&["not_settled", "origin_error"])
                    .inc();
                self.give_back(a).await;
                return Ok(Vec::new());
            }
            if a.settles_at_body_end() {
                // Charged by the body: settled by `settle_metered` once it ended.
                a.delivered_status = Some(status);
                return Ok(Vec::new());
            }
            self.settle(env, a, Some(status)).await;
            if a.stage != Stage::Settled {
                let error = self.settle_error(a);
                // A channel payment never fails open: its turn ended uncharged, so the same
                // payload would be served again and again.
                if a.stage == Stage::SettleFailed
                    && a.channel.is_none()
                    && a.failure_policy == FailurePolicy::Open
                    && error == PaymentError::FacilitatorUnavailable
                {
                    self.metrics
                        .payments
                        .with_label_values(&["served_unpaid", error.reason()])
                        .inc();
                    tracing::warn!(rule = %a.rule_id, "no facilitator could settle: serving unpaid (failure policy open)");
                    // Held until the unpaid answer ended: a copy is not served unpaid too.
                    return Ok(Vec::new());
                }
                // Provably not settled: reusable from the moment the client reads why.
                self.give_back(a).await;
                return Err(Rejection {
                    error,
                    version: a.version,
                    payer: Some(a.payer.clone()),
                    receipt: a.receipt.clone(),
                    corrective: None,
                });
            }
        } else if a.stage == Stage::Settled && status >= 400 {
            self.record_failed_delivery(env, a, Some(status), ORIGIN_FAILED);
        }
        self.metrics.payment_overhead.observe(
            a.started
                .elapsed()
                .saturating_sub(a.facilitator_time)
                .as_secs_f64(),
        );
        Ok(self.receipt_headers(a))
    }

    /// Receipt headers for a settled payment.
    pub fn receipt_headers(&self, a: &Accepted) -> Vec<(&'static str, String)> {
        match &a.receipt {
            Some(r) if a.stage == Stage::Settled => {
                vec![(
                    crate::x402::receipt_header(a.version == 1),
                    r.header_value(),
                )]
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn record_failed_delivery(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        status: Option<u16>,
        reason: &str,
    ) {
        if a.delivery_recorded {
            return;
        }
        a.delivery_recorded = true;
        self.metrics.failed_deliveries.inc();
        let tx = a
            .receipt
            .as_ref()
            .map(|r| r.transaction.clone())
            .unwrap_or_default();
        self.record(a).write(
            &self.ledger,
            env.ledger,
            "delivery_failed",
            &tx,
            Some(reason),
            status,
        );
        tracing::warn!(rule = %a.rule_id, payer = %a.payer, transaction = %tx, reason, "paid request not delivered");
    }

    /// The end of a body-metered (`upto` bytes or seconds) response: charges what was
    /// delivered (`bytes` in `elapsed`), at most the ceiling, and settles it. The body is
    /// already with the client, so a settlement that fails here is the exposure the rule
    /// accepted (at most one ceiling per request): it is ledgered as any failed settlement.
    pub async fn settle_metered(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        bytes: u64,
        elapsed: std::time::Duration,
    ) {
        let Some(status) = a.delivered_status else {
            return;
        };
        if a.stage != Stage::Verified || !a.settles_at_body_end() {
            return;
        }
        a.meter_body(bytes, elapsed);
        self.settle(env, a, Some(status)).await;
        if a.stage != Stage::Settled {
            tracing::warn!(rule = %a.rule_id, payer = %a.payer, "a body-metered response was delivered and its settlement failed");
            // Content went out unpaid: the payer's attempts are limited as for a refused
            // payment, on every replica sharing the store.
            if a.stage == Stage::SettleFailed {
                let payer = a.payer.to_ascii_lowercase();
                self.failures_payer.count(&payer);
                self.count_refusal(
                    crate::state::Attempter::Payer(&payer),
                    env.limits.failed_per_payer,
                )
                .await;
            }
        }
    }

    /// Called when proxying failed after the gate accepted the payment, before the error
    /// reply goes out. Returns receipt headers for that reply when the payment was already
    /// settled; one that did not settle is free again before the client reads the error,
    /// unless a body-metered response's head went out (`delivered_status`, cleared by the
    /// caller when it did not): the end of the request charges what was delivered.
    pub async fn on_failure(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        settlement_reply: bool,
    ) -> Vec<(&'static str, String)> {
        if a.stage == Stage::Settled && !settlement_reply {
            self.record_failed_delivery(env, a, None, ORIGIN_FAILED);
            return self.receipt_headers(a);
        }
        if a.delivered_status.is_none() {
            self.give_back(a).await;
        }
        Vec::new()
    }

    /// End of the request: a payment that did not settle releases its reservation so the
    /// client may use it again; a settled one whose response broke off (`interrupted`: why,
    /// e.g. the client went away mid-body) leaves a `delivery_failed` line, once.
    pub async fn finish(&self, env: &PaymentEnv<'_>, a: &mut Accepted, interrupted: Option<&str>) {
        if let Some(why) = interrupted
            && a.stage == Stage::Settled
        {
            self.record_failed_delivery(env, a, None, why);
        }
        self.give_back(a).await;
    }

    /// What a payment that did not settle holds goes back, once (see [`Accepted::released`]):
    /// its replay reservation (an open outcome keeps it), or its turn on its channel. Called
    /// as soon as the answer is known, and again at the end of the request.
    async fn give_back(&self, a: &mut Accepted) {
        if a.channel.is_some() {
            if a.stage != Stage::Settled && !a.released {
                a.released = true;
                self.end_channel_turn(a).await;
            }
            return;
        }
        self.release_unless_unknown(a).await;
    }
}
