# syntax=docker/dockerfile:1
#
# trailspike container image.
#
#   docker build -t trailspike .                      the service (last stage)
#   docker build --target generator -t trailspike-generator .
#                                                     adds kcat, for the compose
#                                                     stack's synthetic feed
#
# Config: /etc/trailspike/trailspike.toml (config/trailspike.toml, every key
# at its default); override keys with TRAILSPIKE_<SECTION>__<KEY>
# variables. State lives in /var/lib/trailspike: mount a volume there and
# set TRAILSPIKE_STATE__DIR=/var/lib/trailspike.

FROM rust:1-bookworm AS builder
# librdkafka is compiled by rdkafka-sys with its own configure script; it
# links the system OpenSSL and zlib. The rust image has the compilers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The caches keep crates and compiled dependencies between builds; the
# binary is copied out because the target cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trailspike \
    && install -m 0755 target/release/trailspike /usr/local/bin/trailspike

FROM debian:bookworm-slim AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/trailspike \
        --shell /usr/sbin/nologin trailspike \
    && install -d -m 0700 -o trailspike -g trailspike /var/lib/trailspike
COPY --from=builder /usr/local/bin/trailspike /usr/local/bin/trailspike
COPY config/trailspike.toml /etc/trailspike/trailspike.toml
ENV TRAILSPIKE_CONFIG=/etc/trailspike/trailspike.toml
WORKDIR /var/lib/trailspike

# The compose stack's generator: `trailspike generate` piped into the input
# topic by dashboards/compose/feed-cloudtrail.
FROM base AS generator
RUN apt-get update \
    && apt-get install -y --no-install-recommends kcat \
    && rm -rf /var/lib/apt/lists/*
COPY --chmod=0755 dashboards/compose/feed-cloudtrail /usr/local/bin/feed-cloudtrail
USER trailspike
ENTRYPOINT ["feed-cloudtrail"]

FROM base AS service
USER trailspike
VOLUME ["/var/lib/trailspike"]
# /metrics, /healthz, /readyz (metrics.listen; set it to 0.0.0.0:9464).
EXPOSE 9464
ENTRYPOINT ["trailspike"]
CMD ["run", "--config", "/etc/trailspike/trailspike.toml"]
