//! `benches/load.sh` peer: the published `x402-axum` paygate in front of an axum handler that
//! answers what the demo origin's `/fixed/<n>` answers (n bytes of `x`, octet-stream), priced
//! like the gateway's bench rule ($0.01 of USDC on base-sepolia to the same `payTo`) and
//! checked against the same loopback bench facilitator.
//!
//! `x402-axum-peer --listen ADDR --facilitator URL [--body N] [--threads N]`
//!
//! The handler makes the body itself (no proxying): the peer does less work per request than
//! the gateway, which forwards to the origin, so the comparison is conservative.

use std::net::SocketAddr;

use alloy_primitives::address;
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use x402_axum::X402Middleware;
use x402_chain_eip155::{KnownNetworkEip155, V2Eip155Exact};
use x402_types::networks::USDC;

fn usage() -> ! {
    eprintln!("usage: x402-axum-peer --listen ADDR --facilitator URL [--body N] [--threads N]");
    std::process::exit(2)
}

fn main() {
    let (mut listen, mut facilitator, mut body, mut threads) = (None, None, 128usize, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = v.parse::<SocketAddr>().ok(),
            "--facilitator" => facilitator = Some(v),
            "--body" => body = v.parse().unwrap_or_else(|_| usage()),
            "--threads" => threads = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let (Some(listen), Some(facilitator)) = (listen, facilitator) else {
        usage()
    };
    let mut tag = V2Eip155Exact::price_tag(
        address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
        USDC::base_sepolia().amount(10_000u64),
    );
    // As long as the gateway's bench rule allows: the same pre-signed payments stay valid.
    tag.requirements.max_timeout_seconds = 86_400;
    let x402 = X402Middleware::new(&facilitator);
    let payload: &'static [u8] = Vec::leak(vec![b'x'; body]);
    let app = Router::new().route(
        "/fixed/{n}",
        get(move || async move { ([(CONTENT_TYPE, "application/octet-stream")], payload) })
            .layer(x402.with_price_tag(tag)),
    );
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .unwrap_or_else(|e| {
        eprintln!("x402-axum-peer: runtime: {e}");
        std::process::exit(1)
    });
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("x402-axum-peer: bind {listen}: {e}");
                std::process::exit(1)
            }
        };
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("x402-axum-peer: {e}");
            std::process::exit(1)
        }
    });
}
