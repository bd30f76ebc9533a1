package deploy

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/telemetry"
)

// promtool finds Prometheus's promtool or fails the test saying how to get
// it: a check of the alert rules that silently does not run would be worse
// than none.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is not installed; it checks the alert rules. Install it with scripts/install-test-deps.sh " +
			"(Debian: apt-get install prometheus), or run `make test`, which does")
	}
	return p
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool(t), args...)
	cmd.Dir = "prometheus"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// The rules are valid Prometheus rules (promtool check rules) and behave as
// their unit tests say: each alert fires at its threshold and stays silent
// below it (promtool test rules).
func TestAlertRulesPromtool(t *testing.T) {
	out := runPromtool(t, "check", "rules", "keyfence-alerts.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules:\n%s", out)
	}
	out = runPromtool(t, "test", "rules", "keyfence-alerts_test.yml")
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules:\n%s", out)
	}
	t.Logf("promtool test rules keyfence-alerts_test.yml:\n%s", out)
}

// The rules' thresholds and server-side classes are the ones the status page
// judges by (package telemetry): one set of numbers, written twice, checked
// here.
func TestAlertRulesMatchTelemetry(t *testing.T) {
	rules := string(AlertRules)
	for _, want := range []string{
		"keyfence:command_latency_seconds:p99_5m > " + strconv.FormatFloat(telemetry.AlertLatencySeconds, 'f', -1, 64),
		"keyfence:error_ratio:rate5m > " + strconv.FormatFloat(telemetry.AlertErrorRatio, 'f', -1, 64),
		"keyfence:availability:ratio1h < " + strconv.FormatFloat(telemetry.AlertAvailability, 'f', -1, 64),
		"(keyfence_upstream_memory_utilization_ratio) > " + strconv.FormatFloat(telemetry.AlertMemoryUtilRatio, 'f', -1, 64),
		`class=~"` + strings.Join(telemetry.ServerClasses, "|") + `"`,
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("keyfence-alerts.yml lacks %q", want)
		}
	}
	if !strings.Contains(string(Dashboard), strings.Join(telemetry.ServerClasses, "|")) {
		t.Error("the dashboard's availability panel does not use telemetry.ServerClasses")
	}
	for _, alert := range []string{"KeyfenceHighLatency", "KeyfenceHighErrorRate", "KeyfenceLowAvailability", "KeyfenceRedisMemoryHigh", "KeyfenceBreakerOpen", "KeyfenceFallbackServing"} {
		if !strings.Contains(rules, "alert: "+alert+"\n") {
			t.Errorf("no alert %s", alert)
		}
	}
}

// Every query of the dashboard parses as PromQL (Prometheus's own parser)
// and names keyfence metrics only; whether keyfence really exports them is
// checked against a live /metrics in cmd/proxy's TestOperations.
func TestDashboardQueriesParse(t *testing.T) {
	qs, err := DashboardQueries()
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) < 30 {
		t.Fatalf("%d queries: the dashboard lost its panels?", len(qs))
	}
	for _, q := range qs {
		names, err := MetricNames(q.Expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", q.Where, q.Expr, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", q.Where, q.Expr)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, "keyfence_") && !strings.HasPrefix(n, "db_client_") {
				t.Errorf("%s: %q names %s, not a keyfence metric", q.Where, q.Expr, n)
			}
		}
	}
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want string
		bad  bool
	}{
		{expr: `sum(rate(keyfence_commands_total{outcome="error"}[5m])) / sum(rate(keyfence_commands_total[5m]))`, want: "keyfence_commands_total"},
		{expr: `histogram_quantile(0.99, sum by (le) (rate(keyfence_command_duration_seconds_bucket[5m])))`, want: "keyfence_command_duration_seconds_bucket"},
		{expr: `{__name__="keyfence_upstream_up"} * on() group_left keyfence:availability:ratio1h`, want: "keyfence_upstream_up"},
		{expr: `max(a) > b`, want: "a b"},
		{expr: `sum(rate(x[5m]`, bad: true},
	}
	for _, tc := range tests {
		got, err := MetricNames(tc.expr)
		if tc.bad != (err != nil) {
			t.Errorf("%q: err %v", tc.expr, err)
			continue
		}
		if !tc.bad && strings.Join(got, " ") != tc.want {
			t.Errorf("%q: %v, want %s", tc.expr, got, tc.want)
		}
	}
}

// The provisioning file points Grafana at a folder, and the dashboard has
// the stable uid and the data source variable provisioning needs.
func TestDashboardProvisioningReady(t *testing.T) {
	d := string(Dashboard)
	for _, want := range []string{`"uid": "keyfence"`, `"name": "datasource"`, `"uid": "${datasource}"`} {
		if !strings.Contains(d, want) {
			t.Errorf("dashboard lacks %s", want)
		}
	}
	if strings.Contains(d, `"id": null`) || strings.Contains(d, `"__inputs"`) {
		t.Error("dashboard is an export with inputs, not provisioning-ready")
	}
	prov, err := os.ReadFile(filepath.Join("grafana", "provisioning", "keyfence-dashboards.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"apiVersion: 1", "type: file", "path: "} {
		if !strings.Contains(string(prov), want) {
			t.Errorf("provisioning file lacks %q", want)
		}
	}
}
