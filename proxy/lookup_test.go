package proxy

import (
	"strings"
	"testing"

	"github.com/keyfence/keyfence/rewrite"
)

// session.lookup remembers the last command without subcommands; whatever
// the order, it must give what rewrite.Lookup gives.
func TestSessionLookupMatchesTable(t *testing.T) {
	s := &session{}
	for i, line := range []string{
		"GET k", "GET k", "get k", "SET k v", "GET k",
		"CLIENT ID", "CLIENT SETNAME x", "CLIENT ID", "CLIENT", "client id",
		"GET k", "NOSUCH a", "NOSUCH a", "GET k",
		"XINFO STREAM s", "XINFO GROUPS s", "OBJECT ENCODING k",
		strings.Repeat("G", 17) + " k", "GETDEL k", "GETDEL k", "GET k",
	} {
		var args [][]byte
		for _, f := range strings.Fields(line) {
			args = append(args, []byte(f))
		}
		if got, want := s.lookup(args), rewrite.Lookup(args); got != want {
			t.Fatalf("step %d %q: lookup gave %v, the table %v", i, line, commandName(got), commandName(want))
		}
	}
}

func commandName(c *rewrite.Command) string {
	if c == nil {
		return "nil"
	}
	return c.Name
}
