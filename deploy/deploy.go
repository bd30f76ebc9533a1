package deploy

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// AlertRules is prometheus/keyfence-alerts.yml.
//
//go:embed prometheus/keyfence-alerts.yml
var AlertRules []byte

// Dashboard is grafana/keyfence-dashboard.json.
//
//go:embed grafana/keyfence-dashboard.json
var Dashboard []byte

// Query is one PromQL expression and where it is used.
type Query struct {
	Where string // "panel <title>", "variable <name>", "rule <name>"
	Expr  string
}

// DashboardQueries returns every PromQL expression of the dashboard: the
// panels' targets and the variables' label_values() selectors, with
// Grafana's variables replaced by values PromQL accepts.
func DashboardQueries() ([]Query, error) {
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		return nil, fmt.Errorf("dashboard JSON: %w", err)
	}
	var out []Query
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			out = append(out, Query{Where: "panel " + p.Title, Expr: grafanaVars(t.Expr)})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			return nil, fmt.Errorf("variable %s: %w", v.Name, err)
		}
		// label_values(selector, label) is Grafana's, not PromQL: its
		// selector is.
		sel, ok := strings.CutPrefix(q.Query, "label_values(")
		if !ok {
			return nil, fmt.Errorf("variable %s: query %q is not label_values()", v.Name, q.Query)
		}
		i := strings.LastIndex(sel, ",")
		if i < 0 {
			return nil, fmt.Errorf("variable %s: query %q has no label", v.Name, q.Query)
		}
		out = append(out, Query{Where: "variable " + v.Name, Expr: grafanaVars(sel[:i])})
	}
	return out, nil
}

// grafanaVars replaces the variables the dashboard uses with what Grafana
// would put there.
func grafanaVars(expr string) string {
	return strings.NewReplacer("$__rate_interval", "1m", "$__interval", "30s", "$job", ".*", "$tenant", ".*").Replace(expr)
}

// MetricNames parses expr and returns the metric names its selectors name,
// sorted; names of recording rules (with a colon) are left out, since no
// keyfence exports them.
func MetricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name != "" && !strings.Contains(name, ":") {
			seen[name] = true
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}
