// Package telemetry runs keyfence's admin HTTP listener: /healthz (the
// process is alive), /readyz (upstream answers) and Go's pprof handlers.
// OpenTelemetry metrics and traces join it with the telemetry work.
package telemetry
