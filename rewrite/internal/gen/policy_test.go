package main

import (
	"path/filepath"
	"strings"
	"testing"
)

func generateFromRepo() error {
	_, err := generate(filepath.Join("..", "..", "commands.json"), "extra.json")
	return err
}

func TestGenerateToday(t *testing.T) {
	if err := generateFromRepo(); err != nil {
		t.Fatalf("generate: %v", err)
	}
}

// TestPerCommandFactRulesFail checks that each list of per-command facts in
// policy.go stops the generator when it names a command that does not
// exist, or one the fact cannot hold for.
func TestPerCommandFactRulesFail(t *testing.T) {
	tests := []struct {
		name string
		edit func() (undo func())
		want string // part of the error
	}{
		{"cacheable unknown", appendTo(&cacheableReads, "gett"), `cacheableReads entry "gett" names no command`},
		{"cacheable write", appendTo(&cacheableReads, "set"), "set: cacheableReads names it, but it is not a read-only command"},
		{"cacheable blocking", appendTo(&cacheableReads, "xread"), "xread: cacheableReads names it, but it blocks"},
		{"cacheable emulated", appendTo(&cacheableReads, "keys"), "keys: cacheableReads names it, but its policy is PolicyEmulated"},
		{"cacheable odd keys", appendTo(&cacheableReads, "zinter"), "zinter: cacheableReads names it, but its keys are neither"},
		{"cacheable twice", appendTo(&cacheableReads, "get"), `cacheableReads lists "get" twice`},
		{"blocking unknown", appendTo(&blockingCommands, "waitt"), `blockingCommands entry "waitt" names no command`},
		{"blocking already", appendTo(&blockingCommands, "blpop"), "blpop: blockingCommands names it, but Redis already flags it blocking"},
		{"script keyed unknown", appendTo(&scriptKeyedCommands, "sortt"), `scriptKeyedCommands entry "sortt" names no command`},
		{"script keyed keyed", appendTo(&scriptKeyedCommands, "get"), "get: scriptKeyedCommands names it, but it is PolicyKeyed"},
		{"script harmless unknown", appendTo(&scriptHarmlessCommands, "pingg"), `scriptHarmlessCommands entry "pingg" names no command`},
		{"script harmless with keys", appendTo(&scriptHarmlessCommands, "get"), "get: scriptHarmlessCommands names it, but it has keys"},
		{"script both", appendTo(&scriptKeyedCommands, "ping"), "ping: both scriptKeyedCommands and scriptHarmlessCommands name it"},
		{"route unknown", setIn(clusterRoutes, "scann", "RouteAllMasters"), `clusterRoutes entry "scann" names no command`},
		{"route bad kind", setIn(clusterRoutes, "get", "RouteSomewhere"), `get: cluster route "RouteSomewhere" in policy.go is not a rewrite.ClusterRoute`},
		{"route default", setIn(clusterRoutes, "get", "RouteKeySlot"), "get: clusterRoutes gives it RouteKeySlot, its route by default"},
		{"route denied", setIn(clusterRoutes, "monitor", "RouteAllMasters"), "monitor: clusterRoutes names it, but it is denied"},
		{"no_auth forwarded", moveToKeyed("quit"), "quit: Redis runs it before AUTH (no_auth), but its policy PolicyKeyed forwards it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			undo := tt.edit()
			defer undo()
			err := generateFromRepo()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("generate: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

func appendTo(list *[]string, name string) func() func() {
	return func() func() {
		old := *list
		*list = append(append([]string(nil), old...), name)
		return func() { *list = old }
	}
}

func setIn(m map[string]string, name, value string) func() func() {
	return func() func() {
		old, had := m[name]
		m[name] = value
		return func() {
			if had {
				m[name] = old
			} else {
				delete(m, name)
			}
		}
	}
}

// moveToKeyed takes name out of emulatedCommands and makes it keyed.
func moveToKeyed(name string) func() func() {
	return func() func() {
		oldE, oldK := emulatedCommands, keyedCommands
		emulatedCommands = nil
		for _, n := range oldE {
			if n != name {
				emulatedCommands = append(emulatedCommands, n)
			}
		}
		keyedCommands = append(append([]string(nil), oldK...), name)
		return func() { emulatedCommands, keyedCommands = oldE, oldK }
	}
}
