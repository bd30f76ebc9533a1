// Package telemetry makes keyfence observable: OpenTelemetry metrics
// exported in the Prometheus format on the admin listener, which also serves
// /healthz (the process is alive), /readyz (upstream answers) and Go's pprof
// handlers.
package telemetry
