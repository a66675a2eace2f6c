# One image for the init container (`meshlet init`, needs NET_ADMIN and the iptables tools) and
# the sidecar (`meshlet proxy`, runs as uid 1337 with no capabilities).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meshlet

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/meshlet /usr/local/bin/meshlet
# Non-root by default: the sidecar's uid, which the capture rules exempt.
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/meshlet"]
CMD ["proxy"]
