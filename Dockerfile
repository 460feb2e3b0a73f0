# syntax=docker/dockerfile:1
# The userhooks worker image: build with the full Rust toolchain, run on a slim Debian with
# nothing but the binary, as an unprivileged user.

# --- build ------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild every crate. Only the worker is
# built: --no-default-features leaves out the demo, the emulator and the benchmark (the
# emulator's manifest is copied because the workspace lists it; its code is never compiled).
COPY Cargo.toml Cargo.lock ./
COPY crates/sequin-emulator/Cargo.toml crates/sequin-emulator/Cargo.toml
RUN mkdir -p src crates/sequin-emulator/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > crates/sequin-emulator/src/main.rs \
    && touch crates/sequin-emulator/src/lib.rs \
    && cargo build --release --locked --no-default-features --bin userhooks \
    && rm -rf src
COPY src ./src
# The migrations are embedded in the binary (include_str!).
COPY sql ./sql
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features --bin userhooks

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
