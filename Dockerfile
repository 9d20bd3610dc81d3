# jwtgate container image. Not built on the project's machines (no Docker engine there);
# build it with `docker build -t jwtgate .` or any OCI builder.
#
# Ports: 8080 proxy (--listen), 9901 admin: /healthz /readyz /metrics and the authenticated
# POSTs (--admin-listen), 8443 webhook (`jwtgate inject --listen`).

# --- build -------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: only Cargo.toml / Cargo.lock changes rebuild it.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/revocation.rs \
 && echo 'fn main() {}' > benches/auth.rs \
 && echo 'fn main() {}' > examples/revocation_memory.rs \
 && cargo build --release --locked --bin jwtgate \
 && rm -rf src benches examples
COPY src src
COPY benches benches
COPY examples examples
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin jwtgate \
 && strip target/release/jwtgate

# --- runtime -----------------------------------------------------------------------------
# distroless/cc: glibc and CA certificates, no shell, no package manager; runs as 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/jwtgate /usr/local/bin/jwtgate
USER 65532:65532
EXPOSE 8080 9901 8443
ENTRYPOINT ["jwtgate"]
CMD ["serve", "--config", "/etc/jwtgate/jwtgate.toml"]
