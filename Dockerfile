# x402-gateway container: built in a full Rust image, run from a slim Debian (trixie) image as
# a non-root user with its own configuration (deploy/container/) and the rule packs baked in.
# The demo origin (demo-origin) ships too, for trying it out and for deploy/compose.
#   docker build -t x402-gateway .
#   docker run -p 8402:8402 -v $PWD/my-config:/etc/x402-gateway x402-gateway

FROM rust:1.95-slim-trixie AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ perl pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY alloc ./alloc
COPY templates ./templates
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin x402-gateway --bin demo-origin

# The wallet paywall page: the reference @x402/paywall EVM page, pinned and integrity-checked.
FROM node:22-trixie-slim AS paywall
WORKDIR /src
COPY scripts/paywall-bundle.sh scripts/paywall-extract.mjs scripts/
RUN scripts/paywall-bundle.sh /out/evm-paywall.html

FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10402 --home-dir /var/lib/x402-gateway --create-home x402
COPY --from=build /src/target/release/x402-gateway /src/target/release/demo-origin /usr/local/bin/
# The image's own configuration (deploy/container/gateway.toml: the proxy on every interface,
# the admin listener on loopback for the health check, JSON logs, the ledger in the writable
# home), with the shipped rule packs and templates.
COPY deploy/container/gateway.toml /etc/x402-gateway/gateway.toml
COPY rules /etc/x402-gateway/rules
COPY templates /etc/x402-gateway/templates
COPY --from=paywall /out/evm-paywall.html /etc/x402-gateway/paywall/evm-paywall.html
RUN x402-gateway --version \
 && x402-gateway check -c /etc/x402-gateway/gateway.toml
USER x402
WORKDIR /var/lib/x402-gateway
EXPOSE 8402
# The gateway probes its own admin listener: no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["x402-gateway", "probe", "--url", "http://127.0.0.1:9402/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["x402-gateway"]
CMD ["run", "-c", "/etc/x402-gateway/gateway.toml"]
