package report

import (
	"encoding/xml"
	"io"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/bench/internal/rbench"
)

func sampleTable() Table {
	t := Table{
		Title:   "test",
		Targets: []Target{{Name: "direct"}, {Name: "twemproxy"}, {Name: "keyfence", Status: "not built"}},
		Ratios:  []Ratio{{"keyfence", "direct"}, {"twemproxy", "direct"}},
	}
	for round, ops := range []float64{100, 300, 200} {
		t.Samples = append(t.Samples,
			Sample{Round: round + 1, Target: "direct", Pipeline: 1, Result: rbench.Result{Test: "GET", RPS: ops, P50Ms: ops / 100, P99Ms: ops / 10}},
			Sample{Round: round + 1, Target: "twemproxy", Pipeline: 1, Result: rbench.Result{Test: "GET", RPS: ops / 2, P50Ms: 1, P99Ms: 2}},
		)
	}
	return Summarize(t, []string{"GET"}, []int{1})
}

func TestSummarizeMedians(t *testing.T) {
	tb := sampleTable()
	if len(tb.Rows) != 1 {
		t.Fatalf("rows: %d", len(tb.Rows))
	}
	c := tb.Rows[0].Cells
	if c[0].OpsPerSec != 200 || c[0].P50Ms != 2 || c[0].P99Ms != 20 {
		t.Fatalf("direct cell %+v", c[0])
	}
	if c[2].Missing != "not built" {
		t.Fatalf("keyfence cell %+v", c[2])
	}
	if v, ok := tb.RatioValue(tb.Rows[0], tb.Ratios[1]); !ok || v != 0.5 {
		t.Fatalf("ratio %v %v", v, ok)
	}
	if _, ok := tb.RatioValue(tb.Rows[0], tb.Ratios[0]); ok {
		t.Fatal("ratio against a missing target must be absent")
	}
	if median([]float64{4, 1, 3, 2}) != 2.5 {
		t.Fatal("even median")
	}
}

func TestRenderers(t *testing.T) {
	tb := sampleTable()
	txt := tb.Text()
	for _, want := range []string{"direct ops/s", "keyfence/direct", "not built", "0.50x"} {
		if !strings.Contains(txt, want) {
			t.Errorf("text lacks %q:\n%s", want, txt)
		}
	}
	if md := tb.Markdown(); !strings.Contains(md, "| GET | 1 | 200 |") {
		t.Errorf("markdown row missing:\n%s", md)
	}
	// The chart must be well-formed XML, or browsers show nothing.
	d := xml.NewDecoder(strings.NewReader(tb.SVG()))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("svg: %v", err)
		}
	}
}

func TestLoadGeneratorTable(t *testing.T) {
	tb := sampleTable()
	if md := tb.Markdown(); strings.Contains(md, "load generator") {
		t.Errorf("no run measured redis-benchmark's CPU, yet its table is there:\n%s", md)
	}
	for i := range tb.Samples {
		if tb.Samples[i].Target == "direct" {
			tb.Samples[i].ClientCPUUsPerOp = float64(tb.Samples[i].Round) * 1000 // 1000, 2000, 3000 µs
		}
	}
	tb = Summarize(tb, []string{"GET"}, []int{1})
	if got := tb.Rows[0].Cells[0].ClientCPUUsPerOp; got != 2000 {
		t.Fatalf("direct's client CPU median = %v, want 2000", got)
	}
	// 200 ops/s × 2000 µs per request: 0.4 of a core.
	if md := tb.Markdown(); !strings.Contains(md, "| GET | 1 | 2000.00 (0.40) | - | - |") {
		t.Errorf("load generator row missing or wrong:\n%s", md)
	}
}

func TestFormat(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := FormatOps(in); got != want {
			t.Errorf("FormatOps(%v) = %q, want %q", in, got, want)
		}
	}
	if top, step := niceScale(730000); top != 800000 || step != 200000 {
		t.Errorf("niceScale(730000) = %v, %v", top, step)
	}
}
