package rbench

import (
	"reflect"
	"strings"
	"testing"
)

// Captured from redis-benchmark 7.0.15 (`-t set,mset --csv`).
const sample = `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","645161.31","0.947","0.304","0.815","1.919","2.351","3.399"
"MSET (10 keys)","400000.00","1.874","0.520","1.679","3.023","3.255","3.495"
`

func TestParseCSV(t *testing.T) {
	got, err := ParseCSV(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	want := []Result{
		{Test: "SET", RPS: 645161.31, AvgMs: 0.947, MinMs: 0.304, P50Ms: 0.815, P95Ms: 1.919, P99Ms: 2.351, MaxMs: 3.399},
		{Test: "MSET (10 keys)", RPS: 400000, AvgMs: 1.874, MinMs: 0.52, P50Ms: 1.679, P95Ms: 3.023, P99Ms: 3.255, MaxMs: 3.495},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if TestName("mset") != want[1].Test {
		t.Fatalf("TestName(mset) = %q", TestName("mset"))
	}
}

func TestParseCSVNeedsPercentiles(t *testing.T) {
	old := "\"test\",\"rps\"\n\"SET\",\"1000.00\"\n"
	if _, err := ParseCSV(strings.NewReader(old)); err == nil {
		t.Fatal("want an error for CSV without p50/p99 columns")
	}
}

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"one thread", Options{Addr: "127.0.0.1:7000", Clients: 50, Requests: 200000, Pipeline: 16, Keyspace: 100000, Tests: []string{"get", "mset"}},
			"-h 127.0.0.1 -p 7000 -c 50 -n 200000 -P 16 -r 100000 -t get,mset --csv"},
		{"threads 1 is the default", Options{Addr: "127.0.0.1:7000", Clients: 50, Requests: 10, Pipeline: 1, Threads: 1, Tests: []string{"get"}},
			"-h 127.0.0.1 -p 7000 -c 50 -n 10 -P 1 -t get --csv"},
		{"two threads", Options{Addr: "127.0.0.1:7000", Clients: 1000, Requests: 10, Pipeline: 1, DataSize: 3, Threads: 2, Tests: []string{"set"}},
			"-h 127.0.0.1 -p 7000 -c 1000 -n 10 -P 1 -d 3 --threads 2 -t set --csv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(tc.o.Args(), " "); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
