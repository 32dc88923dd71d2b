# ma-webrtc-gateway in a container (README: "Run it next to Music Assistant").
#
#   docker build -t ma-webrtc-gateway .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ma-webrtc-gateway .
#
# Run it with host networking, like MA's own container: WebRTC needs the host's UDP ports
# and addresses (a bridged container would advertise its private address), and MA listens
# on the host's 127.0.0.1:8095.
#
#   docker run -d --name ma-webrtc-gateway --network host --restart unless-stopped \
#     -v ma-webrtc-gateway:/data ma-webrtc-gateway

# ---- build --------------------------------------------------------------------------------
# The official Rust image is multi-arch (amd64, arm64) and has the C compiler aws-lc needs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ma-webrtc-gateway \
 && install -D -m 755 target/release/ma-webrtc-gateway /out/ma-webrtc-gateway \
 && mkdir -p /out/data

# ---- run ----------------------------------------------------------------------------------
# Only glibc and libgcc are needed (TLS roots are built into the binary); distroless "cc"
# has them, no shell, and runs as an unprivileged user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ma-webrtc-gateway /usr/local/bin/ma-webrtc-gateway
# The identity (webrtc_certificate.pem, webrtc_private_key.pem): keep it in a volume, or
# mount MA's data folder here to keep MA's Remote ID.
COPY --from=build --chown=65532:65532 /out/data /data
ENV MA_DATA_DIR=/data
# The status port on the host's loopback (host networking): /healthz for the health check
# below, /status and /metrics for you. Set MA_STATUS_LISTEN= (empty) to turn it off, and drop
# the health check with it.
ENV MA_STATUS_LISTEN=127.0.0.1:8799
VOLUME ["/data"]
USER 65532:65532
# Healthy while registered with the signaling server (the image has no shell and no curl: the
# binary asks its own status port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/ma-webrtc-gateway", "health"]
ENTRYPOINT ["/usr/local/bin/ma-webrtc-gateway"]
CMD ["run"]
