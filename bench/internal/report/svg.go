package report

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strconv"
	"strings"
)

// SVG layout, in pixels.
const (
	svgLeft     = 72
	svgRight    = 24
	svgTop      = 70
	svgPlotH    = 210
	svgPanelGap = 74
	svgBarW     = 24
	svgBarGap   = 3
	svgGroupGap = 34
)

// barColor gives each target a fixed, colour-blind-safe colour (Okabe–Ito).
func barColor(i int) string {
	switch i % 5 {
	case 0:
		return "#0072B2"
	case 1:
		return "#E69F00"
	case 2:
		return "#009E73"
	case 3:
		return "#CC79A7"
	default:
		return "#56B4E9"
	}
}

// SVG draws median ops/s as grouped bars, one panel per pipeline depth
// (their scales differ by an order of magnitude), with a whisker for the
// spread across rounds and the ratio columns under each group.
func (t Table) SVG() string {
	var pipelines []int
	var tests []string
	for _, r := range t.Rows {
		if !slices.Contains(pipelines, r.Pipeline) {
			pipelines = append(pipelines, r.Pipeline)
		}
		if !slices.Contains(tests, r.Test) {
			tests = append(tests, r.Test)
		}
	}
	nt := max(len(t.Targets), 1)
	groupW := nt*svgBarW + (nt-1)*svgBarGap + svgGroupGap
	plotW := max(len(tests), 1) * groupW
	width := svgLeft + plotW + svgRight
	panelH := svgPlotH + svgPanelGap
	height := svgTop + len(pipelines)*panelH + 10

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", svgLeft, esc(t.Title+": median ops/s (higher is better)"))

	// Legend.
	x := svgLeft
	for i, tg := range t.Targets {
		label := tg.Name
		if tg.Status != "" {
			label += " (" + tg.Status + ")"
		}
		fmt.Fprintf(&b, `<rect x="%d" y="34" width="12" height="12" fill="%s"/><text x="%d" y="45">%s</text>`+"\n",
			x, barColor(i), x+16, esc(label))
		x += 16 + 7*len(label) + 18
	}
	if len(t.Ratios) > 0 {
		fmt.Fprintf(&b, `<text x="%d" y="62" font-size="10" fill="#555">%s</text>`+"\n", svgLeft,
			esc("Under each group: "+t.Ratios[0].Num+" ops/s relative to the named target. Whiskers: min–max across rounds."))
	}

	for pi, p := range pipelines {
		top := svgTop + pi*panelH + 18
		bottom := top + svgPlotH - 18
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">pipeline %d (-P %d)</text>`+"\n", svgLeft, top-4, p, p)

		var top0 float64
		for _, r := range t.Rows {
			if r.Pipeline != p {
				continue
			}
			for _, c := range r.Cells {
				top0 = max(top0, c.OpsPerSec)
				for _, v := range c.PerRound {
					top0 = max(top0, v)
				}
			}
		}
		scaleMax, step := niceScale(top0)
		y := func(v float64) float64 {
			return float64(bottom) - v/scaleMax*float64(bottom-top)
		}
		for v := 0.0; v <= scaleMax*1.0001; v += step {
			yy := y(v)
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", svgLeft, yy, svgLeft+plotW, yy)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" font-size="10">%s</text>`+"\n", svgLeft-6, yy+3, shortNum(v))
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", svgLeft, bottom, svgLeft+plotW, bottom)

		gi := 0
		for _, r := range t.Rows {
			if r.Pipeline != p {
				continue
			}
			gx := svgLeft + gi*groupW + svgGroupGap/2
			for ti, c := range r.Cells {
				bx := gx + ti*(svgBarW+svgBarGap)
				if c.Missing != "" {
					fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="9" fill="#999" transform="rotate(-90 %d %d)">%s</text>`+"\n",
						bx+svgBarW/2+3, bottom-4, bx+svgBarW/2+3, bottom-4, esc(c.Missing))
					continue
				}
				yy := y(c.OpsPerSec)
				fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s</title></rect>`+"\n",
					bx, yy, svgBarW, float64(bottom)-yy, barColor(ti),
					esc(fmt.Sprintf("%s %s -P %d: %s ops/s, p50 %.3f ms, p99 %.3f ms", t.Targets[ti].Name, r.Test, p, FormatOps(c.OpsPerSec), c.P50Ms, c.P99Ms)))
				if len(c.PerRound) > 1 {
					lo, hi := y(slices.Min(c.PerRound)), y(slices.Max(c.PerRound))
					cx := bx + svgBarW/2
					fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#222"/>`+"\n", cx, lo, cx, hi)
					fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#222"/>`+"\n", cx-4, hi, cx+4, hi)
					fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#222"/>`+"\n", cx-4, lo, cx+4, lo)
				}
			}
			cx := gx + (nt*svgBarW+(nt-1)*svgBarGap)/2
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", cx, bottom+15, esc(r.Test))
			for ri, ratio := range t.Ratios {
				label := "vs " + ratio.Den + " -"
				if v, ok := t.RatioValue(r, ratio); ok {
					label = fmt.Sprintf("vs %s %.2fx", ratio.Den, v)
				}
				fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" font-size="9" fill="#444">%s</text>`+"\n",
					cx, bottom+28+ri*11, esc(label))
			}
			gi++
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// niceScale returns an axis maximum at or above v and a tick step that
// divides it into at most six round-numbered steps.
func niceScale(v float64) (top, step float64) {
	if v <= 0 {
		return 1, 0.2
	}
	raw := v / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		step = m * mag
		if step*6 >= v {
			break
		}
	}
	return math.Ceil(v/step) * step, step
}

func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	default:
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
}

func esc(s string) string { return html.EscapeString(s) }
