// Package telemetry makes keyfence observable: OpenTelemetry metrics
// exported in the Prometheus format on the admin listener, which also serves
// /healthz (the process is alive), /readyz (upstream answers), the status
// page and Go's pprof handlers.
//
// A Provider is the telemetry of one process; each tenant records through
// the *Metrics that Provider.Tenant gives it, whose series carry its tenant
// label until Close. A sidecar, with one tenant, uses NewMetrics, which is
// a Provider and its one tenant in one.
package telemetry
