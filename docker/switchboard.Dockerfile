# Switchboard: built with the project's toolchain, run on a slim Debian.
#   docker compose build switchboard     (context: the repository root)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY templates templates
COPY benches benches
RUN cargo build --release --locked --bin switchboard \
 && cp target/release/switchboard /usr/local/bin/switchboard

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -r switchboard && useradd -r -g switchboard -d /var/lib/switchboard -m -s /usr/sbin/nologin switchboard
COPY --from=build /usr/local/bin/switchboard /usr/local/bin/switchboard
COPY docker/switchboard.toml /etc/switchboard.toml
USER switchboard
WORKDIR /var/lib/switchboard
EXPOSE 8080
ENTRYPOINT ["switchboard"]
CMD ["serve", "--config", "/etc/switchboard.toml"]
