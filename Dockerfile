# syntax=docker/dockerfile:1
# The userhooks worker image: build with the full Rust toolchain, run on a slim Debian with
# nothing but the binary, as an unprivileged user.

# --- build ------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
# The migrations are embedded in the binary (include_str!).
COPY sql ./sql
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin userhooks

# --- runtime ----------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 userhooks \
    && useradd --system --uid 10001 --gid userhooks --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin userhooks
COPY --from=build /src/target/release/userhooks /usr/local/bin/userhooks
USER userhooks:userhooks
# Inside a container the metrics server must listen beyond loopback.
ENV USERHOOKS_METRICS_ADDR=0.0.0.0:9610 \
    USERHOOKS_LOG_FORMAT=json
EXPOSE 9610
ENTRYPOINT ["/usr/local/bin/userhooks"]
# `docker compose` runs `migrate` once in its own service, then this.
CMD ["run"]
