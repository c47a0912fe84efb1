//! A bare Pingora pass-through proxy, the baseline of `benches/load.sh`: the gateway's own
//! Pingora dependency and server settings, and a `ProxyHttp` that only names the origin.
//!
//! `bare-pingora --listen 127.0.0.1:8500 --origin 127.0.0.1:8080 [--threads 1]`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The gateway's allocator, so that the comparison measures the gateway's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.origin.as_str(),
            false,
            String::new(),
        )))
    }
}

fn usage() -> ! {
    eprintln!("usage: bare-pingora --listen ADDR --origin ADDR [--threads N]");
    std::process::exit(2)
}

fn main() {
    let (mut listen, mut origin, mut threads) = (None, None, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
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
        Bare { origin },
        "bare",
    );
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever()
}
