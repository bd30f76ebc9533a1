package rewrite

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/internal/redistest"
)

// TestSandboxBoundsFunctionHeap: a function that keeps what it makes in
// its library's locals grows Lua's heap at every call; past the sandbox's
// bound every registry goes, and what the library held with it.
func TestSandboxBoundsFunctionHeap(t *testing.T) {
	srv := redistest.StartT(t, redistest.Options{})
	ctx := context.Background()
	c := srv.Client()
	sb := newSandbox(64 << 20)
	if err := c.Do(ctx, "FUNCTION", "LOAD", string(sb.Library)).Err(); err != nil {
		t.Fatal(err)
	}
	prefix, store := "tenant:heap:", FunctionStoreKey("tenant:heap:")
	if err := c.Do(ctx, "FCALL", sb.FunctionReady(), 1, store, prefix).Err(); err != nil {
		t.Fatal(err)
	}
	lib, err := ParseLibrary([]byte("#!lua name=grow\nlocal hold = {}\n" +
		"redis.register_function('grow', function() hold[#hold + 1] = ('x'):rep(1024 * 1024) .. #hold return #hold end)"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "FCALL", sb.FunctionLoad(), 1, store, prefix, "gen1", "load", 100, 1<<20, 500, 1<<20,
		lib.Name, string(lib.Code), string(lib.Chunk)).Err(); err != nil {
		t.Fatal(err)
	}
	last, reset := int64(0), false
	for range 200 {
		n, err := c.Do(ctx, "FCALL", sb.FunctionRun(0), 0, prefix, store, 0, 0, "grow", 1000, 1<<20).Int64()
		if err != nil && strings.HasPrefix(err.Error(), FunctionsNotLoaded) {
			reset = true
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = n
	}
	if !reset {
		t.Fatalf("the library held %d MiB and was never let go", last)
	}
	if last > 80 {
		t.Errorf("the library held %d MiB before it was let go; the bound is 64 MiB", last)
	}
	// What the library held is gone from upstream's Lua heap.
	for _, line := range strings.Split(c.Info(ctx, "memory").Val(), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory_vm_functions:"); ok {
			if n, err := strconv.Atoi(v); err != nil || n > 32<<20 {
				t.Errorf("used_memory_vm_functions %s after the registries went", v)
			}
		}
	}
}
