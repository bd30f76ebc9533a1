package proxy_test

import (
	"strings"
	"testing"

	"github.com/keyfence/keyfence/rewrite"
)

// TestTableFactsReplaceHandLists pins the per-command facts the proxy now
// reads from the command table to the hand lists dispatch.go and cluster.go
// kept before: the old code is copied here as the reference, and every
// command of the table must get the same answer from both.
func TestTableFactsReplaceHandLists(t *testing.T) {
	oldAllowedBeforeAuth := func(name string) bool {
		switch name {
		case "auth", "hello", "quit", "reset":
			return true
		}
		return false
	}
	// oldRoute is clusterCommand's old classification, as a route.
	oldRoute := func(cmd *rewrite.Command) rewrite.ClusterRoute {
		switch {
		case cmd.Name == "scan":
			return rewrite.RouteAllMasters
		case cmd.Name == "spublish" || cmd.Name == "ssubscribe" || cmd.Name == "sunsubscribe":
			return rewrite.RouteShardChannel
		case cmd.Policy == rewrite.PolicyChannel || cmd.Policy == rewrite.PolicyPattern && cmd.Name != "sort" && cmd.Name != "sort_ro":
			return rewrite.RoutePubSubNode
		case cmd.Policy == rewrite.PolicyKeyed || cmd.Name == "sort" || cmd.Name == "sort_ro" || strings.HasPrefix(cmd.Name, "eval"):
			return rewrite.RouteKeySlot
		}
		return rewrite.RouteAnyMaster
	}
	// oldBlocks is blocks' old answer for a command sent with a BLOCK option.
	oldBlocks := func(cmd *rewrite.Command) bool {
		switch cmd.Name {
		case "xread", "xreadgroup", "wait":
			return true
		}
		return cmd.HasFlag(rewrite.FlagBlocking)
	}
	for _, name := range rewrite.CommandNames() {
		var args [][]byte
		for _, w := range strings.Split(name, "|") {
			args = append(args, []byte(w))
		}
		cmd := rewrite.Lookup(args)
		if cmd == nil || cmd.Name != name {
			t.Fatalf("%s: not found in the table", name)
		}
		if got, want := cmd.HasFlag(rewrite.FlagNoAuth), oldAllowedBeforeAuth(name); got != want {
			t.Errorf("%s: allowed before AUTH %v, the old list said %v", name, got, want)
		}
		if got, want := cmd.Route, oldRoute(cmd); got != want {
			t.Errorf("%s: cluster route %d, the old code routed it %d", name, got, want)
		}
		if got, want := cmd.HasFlag(rewrite.FlagBlocking), oldBlocks(cmd); got != want {
			t.Errorf("%s: FlagBlocking %v, the old blocks said %v", name, got, want)
		}
	}
}
