# syntax=docker/dockerfile:1.7
#
# canary-proxy image: a pinned Rust builder, a `--locked` release build, and a distroless runtime
# (glibc, libgcc, CA certificates, tzdata; no shell) running as a non-root user.
#
#   docker build -t canary-proxy:0.1.0 .
#
# No HEALTHCHECK on purpose: in Kubernetes the kubelet probes /healthz and /readyz on the admin port
# (k8s/deployment.yaml), and Docker's HEALTHCHECK is ignored there.

ARG RUST_VERSION=1.95.0
# The builder and the runtime share one Debian release, so the binary finds the glibc it was linked against.
ARG DEBIAN_RELEASE=bookworm
ARG DISTROLESS_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- deps: download every crate in Cargo.lock once; this layer changes only with the manifests ----
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Every workspace member's manifest, or the workspace does not resolve (.ci/check-deploy checks this list).
COPY proxy/Cargo.toml proxy/
COPY controller/Cargo.toml controller/
COPY bench/Cargo.toml bench/
COPY testkit/Cargo.toml testkit/
# Cargo needs a target per package to load the workspace; empty files are enough to fetch.
RUN for crate in proxy controller bench testkit; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs" "$crate/src/main.rs"; \
    done \
    && cargo fetch --locked

# ---- builder: compile the real sources offline against the fetched registry ----
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src
COPY --from=deps /usr/local/cargo/registry /usr/local/cargo/registry
COPY . .
# The target directory is a BuildKit cache, so a rebuild after a source change recompiles only the
# workspace crates; the binary is copied out of the cache within the same step.
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --offline -p canary-proxy \
    && install -D -m 0755 target/release/canary-proxy /out/canary-proxy

# ---- runtime ----
FROM ${DISTROLESS_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="canary-proxy" \
      org.opencontainers.image.description="Blue/green traffic-splitting reverse proxy with rollback in the data path" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/canary-proxy /usr/local/bin/canary-proxy
# The distroless "nonroot" user, by number, so the kubelet can check runAsNonRoot without /etc/passwd.
USER 65532:65532
# 8080: data listener (HTTP/1.1, h2c, TLS when --tls-cert is given); 9090: admin (/metrics, /healthz, /readyz, /status, /).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/canary-proxy"]
