# syntax=docker/dockerfile:1
# credbroker container image: `docker build -t credbroker:local .`
# (docker-compose.yml builds it for the local stack.)

# Build stage: the toolchain the project is tested with; override with --build-arg.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# josekit links OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artefacts between builds; --locked builds
# exactly the dependency versions of Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin credbroker \
 && install -m 0755 target/release/credbroker /usr/local/bin/credbroker

# Runtime stage: the binary, OpenSSL's runtime library, CA roots, and curl for health checks.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin credbroker
COPY --from=build /usr/local/bin/credbroker /usr/local/bin/credbroker
# Keys and broker.toml are mounted (read-only) at /etc/credbroker; never baked in.
USER 10001:10001
EXPOSE 8443
ENTRYPOINT ["credbroker"]
CMD ["--help"]
