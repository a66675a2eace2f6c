# One image for the init container (`meshlet init`, needs NET_ADMIN and the iptables tools, nft
# and legacy) and the sidecar (`meshlet proxy`, runs as uid 1337 with no capabilities).
#
# With a registry:   docker build -t meshlet .
# Offline (no registry, as in CI): docker/build-offline.sh — a base image made with mmdebstrap
# and a static binary built on the host, through the `prebuilt` target below.
#
# The stages are ordered so that `--target prebuilt` never needs the Rust image: the classic
# builder builds every stage up to the target.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime
# The offline base already holds iptables and curl; a stock Debian image gets them here.
RUN if ! command -v iptables-legacy >/dev/null || ! command -v curl >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends iptables curl ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# Non-root by default: the sidecar's uid, which the capture rules exempt.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/meshlet"]
CMD ["proxy"]

FROM runtime AS prebuilt
COPY target/image/meshlet /usr/local/bin/meshlet

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meshlet

FROM runtime
COPY --from=build /src/target/release/meshlet /usr/local/bin/meshlet
