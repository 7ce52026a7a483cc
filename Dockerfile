# voxrt container image.
#   docker build -t voxrt .
#   docker run --rm -p 8080:8080 -e VOXRT_ADMIN__TOKEN_SHA256=$(voxrt hash-token < token) \
#     -e VOXRT_AUTH__API_KEYS_SHA256=$(voxrt hash-token < client-key) voxrt
# (the production profile requires an admin token hash and client credentials; see
# docs/deploy.md and docs/security.md)
# Dependencies build in their own layer, so a change to voxrt's code rebuilds only voxrt.

FROM rust:1.95-bookworm AS builder
WORKDIR /build
# 1. Dependencies only: manifests plus stub sources.
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
# The load generator is a workspace member; the image does not build it, but cargo needs
# its manifest and a stub source to read the workspace (and stubs of the targets Cargo.toml
# declares: benches, the microphone example).
COPY loadgen/Cargo.toml loadgen/Cargo.toml
RUN mkdir -p src actors/src loadgen/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs actors/src/lib.rs \
 && echo 'fn main() {}' > loadgen/src/main.rs \
 && mkdir -p actors/benches benches examples/mic_capture \
 && touch actors/benches/registry_stats.rs actors/benches/hot_path.rs benches/pipeline.rs \
    examples/mic_capture/main.rs \
 && cargo build --release --locked --bin voxrt \
 && rm -rf src actors/src
# 2. voxrt itself.
COPY config config
COPY src src
COPY actors/src actors/src
RUN touch src/main.rs src/lib.rs actors/src/lib.rs \
 && cargo build --release --locked --bin voxrt

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home voxrt
COPY --from=builder /build/target/release/voxrt /usr/local/bin/voxrt
COPY config /etc/voxrt/config
USER voxrt
ENV VOXRT_PROFILE=production
EXPOSE 8080
# SIGTERM drains sessions within server.shutdown_grace_s (8 s), inside Docker's 10 s default.
STOPSIGNAL SIGTERM
# The binary checks itself (GET /health on the configured port): the image needs no curl.
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD ["/usr/local/bin/voxrt", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/voxrt"]
