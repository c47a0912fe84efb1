//! A bare Pingora pass-through proxy, the baseline of `benches/load.sh`: the gateway's own
//! Pingora dependency, allocator and server settings, and a `ProxyHttp` that only names the
//! origin.
//!
//! With `--forwarded` it also does what any production reverse proxy in front of an origin
//! does, and what the nginx target of the report is configured to do: it sets
//! `X-Forwarded-For`, `-Proto` and `-Host` and gives the upstream the gateway's default
//! timeouts (connect 2 s, read and write 30 s, idle 60 s). The difference between this and the
//! gateway's free path is the gateway's own per-request work.
//!
//! `bare-pingora --listen 127.0.0.1:8500 --origin 127.0.0.1:8080 [--threads 1] [--forwarded]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark tool: a failed set-up step ends the run"
)]

use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The gateway's allocator, so that the comparison measures the gateway's own work.
#[global_allocator]
static GLOBAL: x402_alloc::MiMalloc = x402_alloc::MiMalloc;

struct Bare {
    origin: String,
    forwarded: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.origin.as_str(), false, String::new());
        if self.forwarded {
            let o = &mut peer.options;
            o.connection_timeout = Some(Duration::from_secs(2));
            o.read_timeout = Some(Duration::from_secs(30));
            o.write_timeout = Some(Duration::from_secs(30));
            o.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if !self.forwarded {
            return Ok(());
        }
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let xff = match req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
                _ => ip.to_string(),
            };
            req.insert_header("x-forwarded-for", xff)?;
        }
        req.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = req.headers.get(http::header::HOST).cloned() {
            req.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }
}

fn usage() -> ! {
    eprintln!("usage: bare-pingora --listen ADDR --origin ADDR [--threads N] [--forwarded]");
    std::process::exit(2)
}

fn main() {
    let (mut listen, mut origin, mut threads, mut forwarded) = (None, None, 1usize, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--forwarded" {
            forwarded = true;
            continue;
        }
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(v),
            "--origin" => origin = Some(v),
            "--threads" => threads = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let (Some(listen), Some(origin)) = (listen, origin) else {
        usage()
    };
    // The settings `x402-gateway` uses (src/server.rs), minus its own services.
    let mut conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    conf.work_stealing = false;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Bare { origin, forwarded },
        "bare",
    );
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever()
}
