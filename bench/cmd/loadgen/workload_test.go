package main

import "testing"

func TestWorkloadDraws(t *testing.T) {
	wl, err := newWorkload(0.8, 1000, 1.1, 32, 4096, 1)
	if err != nil {
		t.Fatal(err)
	}
	w := wl.newWorker(0, 0, nil)
	var small, large, hot int
	for range 20000 {
		n := w.valueSize()
		if n < 32 || n > 4096 {
			t.Fatalf("value size %d out of range", n)
		}
		if n < 64 {
			small++
		}
		if n >= 2048 {
			large++
		}
		if k := w.zipf.Uint64(); k >= 1000 {
			t.Fatalf("key %d out of range", k)
		} else if k < 10 {
			hot++
		}
	}
	// Log-uniform: 32–64 B and 2–4 KiB are each one sixth-and-a-bit of the
	// range; Zipf: the ten hottest keys get a large share.
	if small < 2000 || large < 2000 {
		t.Errorf("sizes not log-uniform: %d small, %d large of 20000", small, large)
	}
	if hot < 20000/4 {
		t.Errorf("keys not skewed: %d of 20000 hit the 10 hottest", hot)
	}
	for _, bad := range [][3]float64{{1.5, 1000, 1.1}, {0.8, 1, 1.1}, {0.8, 1000, 1.0}} {
		if _, err := newWorkload(bad[0], uint64(bad[1]), bad[2], 32, 4096, 1); err == nil {
			t.Errorf("newWorkload(%v): want error", bad)
		}
	}
}
