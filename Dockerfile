# syntax=docker/dockerfile:1

# Build: a static binary, so the runtime image needs no libc.
FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not re-download them.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/keyfence ./cmd/proxy

# Run: distroless static has CA certificates (for rediss:// upstreams) and
# tzdata, and no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keyfence /usr/local/bin/keyfence
USER 65532:65532
# keyfence listens on loopback by default, which nothing outside the container
# can reach: inside a container the Redis protocol listens on all interfaces
# (6380, the only port exposed). The admin endpoint (9121: /metrics,
# /healthz, /readyz, and /debug/pprof with PROXY_ADMIN_PPROF=true) stays on
# the container's loopback: to scrape it or probe it over HTTP, set
# PROXY_ADMIN=0.0.0.0:9121 together with PROXY_ADMIN_TOKEN_FILE (keyfence
# refuses a non-loopback admin address without a token). See README,
# "The container".
ENV PROXY_LISTEN=0.0.0.0:6380 \
    PROXY_ADMIN=127.0.0.1:9121
EXPOSE 6380
ENTRYPOINT ["/usr/local/bin/keyfence"]
