// Package report turns the rounds of a side-by-side benchmark into one
// summary (medians per target, ratios between targets) and renders it as a
// terminal table, as Markdown and as an SVG chart, so that all three always
// show the same numbers.
package report
