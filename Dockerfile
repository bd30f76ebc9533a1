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
# can reach: inside a container, listen on all interfaces. Override with
# -e PROXY_LISTEN=... / -e PROXY_ADMIN=... or the --listen / --admin flags.
# 6380: the Redis protocol; 9121: admin HTTP (/metrics, /healthz, /readyz).
ENV PROXY_LISTEN=0.0.0.0:6380 \
    PROXY_ADMIN=0.0.0.0:9121
EXPOSE 6380 9121
ENTRYPOINT ["/usr/local/bin/keyfence"]
