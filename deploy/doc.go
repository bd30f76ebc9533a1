// Package deploy holds what operators load next to keyfence: the Prometheus
// alert rules (prometheus/keyfence-alerts.yml, with their promtool unit
// tests) and the Grafana dashboard (grafana/keyfence-dashboard.json, with a
// provisioning file). Its Go side embeds them and lists the PromQL they
// hold, so that tests check the queries parse and name only metrics a live
// keyfence exports (cmd/proxy's TestOperations), and its own tests run
// promtool.
package deploy
