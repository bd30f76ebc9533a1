// Package otlptest is a small OTLP receiver for tests: it accepts metrics
// and traces over gRPC and over HTTP (protobuf), as the OpenTelemetry
// Collector would, and keeps what it received for the test to look at. It
// is built on the official OTLP protobuf and gRPC packages, so what it
// accepts is what a real collector accepts.
package otlptest
