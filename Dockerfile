# syntax=docker/dockerfile:1
#
# pipe in a container: `piped` (the default) and `pipec` in one small image.
#
#   docker build -t pipe .
#   docker run -d --name piped \
#       -e PIPE_TOKEN=<client secret> -e PIPE_ADMIN_TOKEN=<admin secret> \
#       -p 8910:8910 -p 127.0.0.1:8911:8911 \
#       -p 20000-20099:20000-20099/tcp -p 20000-20099:20000-20099/udp \
#       pipe
#   docker run --rm --network host -e PIPE_TOKEN=<client secret> --entrypoint pipec \
#       pipe --server tunnel.example.com:8910 --forward tcp:3000:0
#
# Secrets come from the environment at run time (PIPE_TOKEN, PIPE_ADMIN_TOKEN; on
# fly.io `fly secrets set`), never from the image. The default command below binds the
# admin server on 0.0.0.0 so the health check and a published admin port work; piped
# refuses that without PIPE_ADMIN_TOKEN. Override the command to change any flag;
# without --admin, also run with --no-healthcheck (the health check probes the admin).
#
# Ports: 8910/tcp the control port (pipec connects here), 8911/tcp the admin
# (dashboard, API, /metrics, /healthz), 20000-20099 tcp+udp the public tunnel ports
# clients may claim (--ports; publish the same range with -p), 8920/tcp the peer links
# of a cluster (--cluster with --peer-listen 8920, e.g. PIPE_CLUSTER and
# PIPE_PEER_LISTEN in the environment; see configs/docker-compose.cluster.yml): publish
# it only to the other nodes, never to the internet.

# --- build -----------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# Registry and target caches survive between builds (BuildKit); the binaries are
# copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
    && install -D -m 0755 target/release/piped target/release/pipec -t /out/

# --- run -------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: pipec --tls checks the server against the system roots.
# curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pipe
COPY --from=build /out/piped /out/pipec /usr/local/bin/

# The state directory (the --tls-self-signed key and certificate): mount a volume
# here so they survive a new container.
RUN install -d -m 0700 -o pipe -g pipe /var/lib/pipe
ENV STATE_DIRECTORY=/var/lib/pipe
VOLUME /var/lib/pipe
USER pipe:pipe
EXPOSE 8910/tcp 8911/tcp 8920/tcp 20000-20099/tcp 20000-20099/udp
# /healthz answers 200 "ok" without the admin token; a hung or dead piped is marked
# unhealthy within about a minute.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=2 \
    CMD curl -fsS --max-time 4 http://127.0.0.1:8911/healthz || exit 1
# piped drains on SIGTERM (Docker's default stop signal) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["piped"]
CMD ["--listen", "0.0.0.0:8910", "--admin", "0.0.0.0:8911", "--bind-addr", "0.0.0.0", "--ports", "20000-20099", "--log-format", "json"]
