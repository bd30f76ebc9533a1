package report

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keyfence/keyfence/bench/internal/rbench"
)

// Sample is one test's result from one redis-benchmark run.
type Sample struct {
	Round    int    `json:"round"`
	Target   string `json:"target"`
	Pipeline int    `json:"pipeline"`
	rbench.Result
	// CPUUsPerOp is the CPU time (user + system) the target's own process
	// spent per request during the run, in microseconds: the proxy for
	// twemproxy and keyfence, redis-server for direct. 0: not measured.
	CPUUsPerOp float64 `json:"cpu_us_per_op,omitempty"`
	// ClientCPUUsPerOp is the CPU time redis-benchmark itself spent per
	// request, in microseconds. 0: not measured.
	ClientCPUUsPerOp float64 `json:"client_cpu_us_per_op,omitempty"`
}

// Failure is a redis-benchmark run that produced no numbers.
type Failure struct {
	Round    int    `json:"round"`
	Target   string `json:"target"`
	Pipeline int    `json:"pipeline"`
	// Test is empty when the whole run failed rather than one test.
	Test string `json:"test,omitempty"`
	Err  string `json:"error"`
}

// Target is one column group of the table.
type Target struct {
	Name string `json:"name"`
	// Status is empty for a target that ran; otherwise it says why there are
	// no numbers ("not built", "failed to start").
	Status string `json:"status,omitempty"`
}

// Ratio is a throughput ratio column, Num's median ops/s over Den's.
type Ratio struct{ Num, Den string }

// Cell is one target's summary for one test and pipeline depth.
type Cell struct {
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	// CPUUsPerOp is the median of the samples' CPUUsPerOp.
	CPUUsPerOp float64 `json:"cpu_us_per_op,omitempty"`
	// ClientCPUUsPerOp is the median of the samples' ClientCPUUsPerOp.
	ClientCPUUsPerOp float64   `json:"client_cpu_us_per_op,omitempty"`
	PerRound         []float64 `json:"ops_per_round,omitempty"`
	// Missing says why there are no numbers, when there are none.
	Missing string `json:"missing,omitempty"`
}

// Row is one test at one pipeline depth, with a cell per target.
type Row struct {
	Test     string `json:"test"`
	Pipeline int    `json:"pipeline"`
	Cells    []Cell `json:"cells"`
}

// Table is the summary every renderer draws from.
type Table struct {
	Title    string    `json:"title"`
	When     time.Time `json:"when"`
	Settings []string  `json:"settings"`
	Targets  []Target  `json:"targets"`
	Ratios   []Ratio   `json:"ratios"`
	Rows     []Row     `json:"rows"`
	Samples  []Sample  `json:"samples"`
	Failures []Failure `json:"failures,omitempty"`
}

// Summarize takes the median over rounds of each target's ops/s, p50 and
// p99, for every test and pipeline depth. Medians, because one noisy round
// on a shared machine should not move the result.
func Summarize(t Table, tests []string, pipelines []int) Table {
	t.Rows = nil
	for _, p := range pipelines {
		for _, test := range tests {
			row := Row{Test: test, Pipeline: p}
			for _, tg := range t.Targets {
				var ops, p50, p99, cpu, client []float64
				for _, s := range t.Samples {
					if s.Target == tg.Name && s.Pipeline == p && s.Test == test {
						ops = append(ops, s.RPS)
						p50 = append(p50, s.P50Ms)
						p99 = append(p99, s.P99Ms)
						cpu = append(cpu, s.CPUUsPerOp)
						client = append(client, s.ClientCPUUsPerOp)
					}
				}
				c := Cell{PerRound: ops}
				switch {
				case len(ops) > 0:
					c.OpsPerSec, c.P50Ms, c.P99Ms, c.CPUUsPerOp = median(ops), median(p50), median(p99), median(cpu)
					c.ClientCPUUsPerOp = median(client)
				case tg.Status != "":
					c.Missing = tg.Status
				default:
					c.Missing = "error"
				}
				row.Cells = append(row.Cells, c)
			}
			t.Rows = append(t.Rows, row)
		}
	}
	return t
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (t Table) targetIndex(name string) int {
	return slices.IndexFunc(t.Targets, func(tg Target) bool { return tg.Name == name })
}

// RatioValue is Num/Den for one row; ok is false when either side has no
// numbers.
func (t Table) RatioValue(row Row, r Ratio) (v float64, ok bool) {
	i, j := t.targetIndex(r.Num), t.targetIndex(r.Den)
	if i < 0 || j < 0 {
		return 0, false
	}
	a, b := row.Cells[i], row.Cells[j]
	if a.Missing != "" || b.Missing != "" || b.OpsPerSec == 0 {
		return 0, false
	}
	return a.OpsPerSec / b.OpsPerSec, true
}

// header and cells are shared by the text and Markdown renderers.
func (t Table) header() []string {
	h := []string{"test", "pipeline"}
	for _, tg := range t.Targets {
		h = append(h, tg.Name+" ops/s", "p50 ms", "p99 ms", "cpu µs/op")
	}
	for _, r := range t.Ratios {
		h = append(h, r.Num+"/"+r.Den)
	}
	return h
}

func (t Table) cells(row Row) []string {
	out := []string{row.Test, strconv.Itoa(row.Pipeline)}
	for _, c := range row.Cells {
		if c.Missing != "" {
			out = append(out, c.Missing, "-", "-", "-")
			continue
		}
		cpu := "-"
		if c.CPUUsPerOp > 0 {
			cpu = fmt.Sprintf("%.2f", c.CPUUsPerOp)
		}
		out = append(out, FormatOps(c.OpsPerSec), fmt.Sprintf("%.3f", c.P50Ms), fmt.Sprintf("%.3f", c.P99Ms), cpu)
	}
	for _, r := range t.Ratios {
		if v, ok := t.RatioValue(row, r); ok {
			out = append(out, fmt.Sprintf("%.2fx", v))
		} else {
			out = append(out, "-")
		}
	}
	return out
}

// FormatOps prints a rate with thousands separators.
func FormatOps(v float64) string {
	s := strconv.FormatInt(int64(math.Round(v)), 10)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Text renders the table for a terminal: first two columns left-aligned,
// numbers right-aligned.
func (t Table) Text() string {
	lines := [][]string{t.header()}
	for _, row := range t.Rows {
		lines = append(lines, t.cells(row))
	}
	return AlignText(lines, 2)
}

// AlignText lays out rows as padded columns for a terminal; the first
// `left` columns are left-aligned, the rest (numbers) right-aligned.
func AlignText(lines [][]string, left int) string {
	if len(lines) == 0 {
		return ""
	}
	width := make([]int, len(lines[0]))
	for _, l := range lines {
		for i, c := range l {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for _, l := range lines {
		for i, c := range l {
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			if i > 0 {
				b.WriteString("  ")
			}
			if i < left {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Markdown renders the same table with its settings, a spread table that
// shows how much the rounds disagreed, and any failures.
func (t Table) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", t.Title)
	fmt.Fprintf(&b, "Run at %s.\n\n", t.When.UTC().Format(time.RFC3339))
	for _, s := range t.Settings {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	b.WriteString("\nMedian over rounds of each target's ops/s, p50 and p99 latency (ms, as measured by redis-benchmark) and CPU per request " +
		"(µs of user+system time of the target's own process: the proxy, or redis-server for direct). " +
		"Ratio columns divide median ops/s; above 1.00x means the first target is faster.\n\n")
	writeMDTable(&b, t.header(), t.mdRows(), 2)

	b.WriteString("\n## Spread across rounds (ops/s, min – max)\n\n")
	h := []string{"test", "pipeline"}
	for _, tg := range t.Targets {
		h = append(h, tg.Name)
	}
	spread, _ := t.perCell(func(c Cell) (string, bool) {
		if len(c.PerRound) == 0 {
			return "", false
		}
		return FormatOps(slices.Min(c.PerRound)) + " – " + FormatOps(slices.Max(c.PerRound)), true
	})
	writeMDTable(&b, h, spread, 2)

	if client, measured := t.perCell(func(c Cell) (string, bool) {
		if c.ClientCPUUsPerOp <= 0 {
			return "", false
		}
		return fmt.Sprintf("%.2f (%.2f)", c.ClientCPUUsPerOp, c.OpsPerSec*c.ClientCPUUsPerOp/1e6), true
	}); measured {
		b.WriteString("\n## The load generator (redis-benchmark's own CPU)\n\n" +
			"Median µs of CPU redis-benchmark spent per request, and in brackets the cores that kept busy " +
			"(median ops/s × that). With one thread (no `--threads` in the command) it cannot use more than one core: " +
			"near 1.00 the client, not the target, sets the pace, and the ratios above say as much about the client as about the targets.\n\n")
		writeMDTable(&b, h, client, 2)
	}

	if len(t.Failures) > 0 {
		b.WriteString("\n## Failed runs\n\n")
		for _, f := range t.Failures {
			what := f.Test
			if what == "" {
				what = "all tests"
			}
			fmt.Fprintf(&b, "- round %d, %s, pipeline %d, %s: `%s`\n", f.Round, f.Target, f.Pipeline, what,
				strings.ReplaceAll(strings.ReplaceAll(f.Err, "`", "'"), "\n", " "))
		}
	}
	return b.String()
}

// perCell is a table with a row per test and pipeline depth and a column
// per target, each cell what text says of it, or "-" for a cell without
// numbers or one text declines; some says whether text gave at least one.
func (t Table) perCell(text func(Cell) (string, bool)) (rows [][]string, some bool) {
	for _, row := range t.Rows {
		r := []string{row.Test, strconv.Itoa(row.Pipeline)}
		for _, c := range row.Cells {
			v, ok := "", false
			if c.Missing == "" {
				v, ok = text(c)
			}
			if !ok {
				v = "-"
			}
			some = some || ok
			r = append(r, v)
		}
		rows = append(rows, r)
	}
	return rows, some
}

func (t Table) mdRows() [][]string {
	var rows [][]string
	for _, row := range t.Rows {
		rows = append(rows, t.cells(row))
	}
	return rows
}

// MarkdownTable renders a pipe table; the first `left` columns are
// left-aligned, the rest right-aligned.
func MarkdownTable(header []string, rows [][]string, left int) string {
	var b strings.Builder
	writeMDTable(&b, header, rows, left)
	return b.String()
}

func writeMDTable(b *strings.Builder, header []string, rows [][]string, left int) {
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	b.WriteString("|")
	for _, h := range header {
		b.WriteString(" " + esc(h) + " |")
	}
	b.WriteString("\n|")
	for i := range header {
		if i < left {
			b.WriteString("---|")
		} else {
			b.WriteString("---:|")
		}
	}
	b.WriteString("\n")
	for _, r := range rows {
		b.WriteString("|")
		for _, c := range r {
			b.WriteString(" " + esc(c) + " |")
		}
		b.WriteString("\n")
	}
}
