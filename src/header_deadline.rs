//! A deadline on reading each request head. Pingora's own limit applies to every single read
//! (60 s), so a client trickling header bytes can hold a connection open for ever (slowloris).
//! This wraps the proxy application: if no complete request head has arrived within the
//! deadline (counted from the start of the wait, idle keep-alive time included), the connection
//! is closed without an answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;

use crate::metrics::Metrics;

tokio::task_local! {
    static HEAD_READ: Arc<AtomicBool>;
}

/// Marks the current request's head as read: its connection's deadline no longer applies.
/// Called by the proxy when it creates the request context.
pub fn head_read() {
    let _ = HEAD_READ.try_with(|read| read.store(true, Ordering::Release));
}

/// An HTTP application whose connections must deliver each request head within `timeout`.
pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        HeaderDeadline {
            inner: Arc::new(inner),
            timeout,
            metrics,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for HeaderDeadline<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let read = Arc::new(AtomicBool::new(false));
        let request = HEAD_READ.scope(read.clone(), self.inner.process_new_http(session, shutdown));
        tokio::pin!(request);
        // Pingora's fast timer: rounded to 10 ms and shared by every deadline in the same
        // tick, registered only if the request is still pending when first polled.
        if let Ok(done) = fast_timeout(self.timeout, &mut request).await {
            return done;
        }
        if read.load(Ordering::Acquire) {
            return request.await;
        }
        // Nothing has been answered yet: dropping the request closes the connection.
        self.metrics.header_timeouts.inc();
        None
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }
}
