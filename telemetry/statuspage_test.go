package telemetry

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/browsertest"

	"github.com/chromedp/chromedp"
)

// The status page in headless Chromium, as a person sees it: a gateway's
// lists its tenants busiest first, with the overflow among them and the
// count in the header; a sidecar's names its tenant and has no such table.
// (cmd/proxy's TestOperations checks the sidecar's page under real load.)
func TestStatusPageTenants(t *testing.T) {
	chromium := browsertest.Chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	gw, err := NewProvider([]string{"get"}, WithLogger(quiet()), WithMaxTenants(3))
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Shutdown(ctx)
	rates := map[string]int{"busy": 50, "mid": 10, "quiet": 1, "late": 5} // commands per tick; late is past the cap
	ms := map[string]*Metrics{}
	for _, id := range []string{"busy", "mid", "quiet", "late"} {
		ms[id] = tenantOf(t, gw, id, Gauges{Sessions: fixed(int64(rates[id]))})
	}
	if ms["late"].Tenant() != OverflowTenant {
		t.Fatalf("late is %q, want the overflow", ms["late"].Tenant())
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-load.Done():
				return
			case <-tick.C:
			}
			for id, n := range rates {
				commands(ms[id], "get", n, "+OK\r\n", time.Millisecond)
			}
			commands(ms["mid"], "get", 1, "-ERR x\r\n", 0)
		}
	})
	sidecar, err := NewMetrics("acme", []string{"get"}, Gauges{}, WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	defer sidecar.Shutdown(ctx)
	ready := func(context.Context) Readiness { return Readiness{Ready: true} }
	gwSrv := httptest.NewServer(adminHandler(ready, gw.Handler(), AdminOptions{Status: gw.Status}))
	defer gwSrv.Close()
	scSrv := httptest.NewServer(adminHandler(ready, sidecar.Handler(), AdminOptions{Status: sidecar.Status}))
	defer scSrv.Close()

	bctx, stop := browsertest.Start(t, ctx, chromium)
	defer stop()
	type page struct {
		Polls       int
		Label, Head string
		Hidden      bool
		Rows        [][]string
		More        string
		MoreHidden  bool
	}
	read := func() page {
		raw, err := chromedp.Run(bctx, chromedp.Evaluate[string](`JSON.stringify({
			polls: Number(document.body.dataset.polls || 0),
			label: document.getElementById("tenant-label").innerText,
			head: document.getElementById("tenant").innerText,
			hidden: document.getElementById("t-tenants").hidden,
			rows: [...document.querySelectorAll("#tenants tr")].map(tr => [...tr.children].map(td => td.innerText)),
			more: document.getElementById("tenants-more").textContent,
			moreHidden: document.getElementById("tenants-foot").hidden,
		})`))
		if err != nil {
			t.Fatalf("reading the page: %v", err)
		}
		var p page
		if err := json.Unmarshal([]byte(raw), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("gateway", func(t *testing.T) {
		if err := chromedp.Do(bctx, chromedp.Navigate(gwSrv.URL+"/")); err != nil {
			t.Fatal(err)
		}
		var p page
		err := waitUntil(ctx, func() bool {
			p = read()
			return p.Polls >= 2 && len(p.Rows) == 4 && p.Rows[0][2] != "0"
		})
		if err != nil {
			t.Fatalf("%v: the page never listed the tenants with rates: %+v", err, p)
		}
		if p.Label != "tenants" || p.Head != "3 + 1 past the cap of 3" || p.Hidden || !p.MoreHidden {
			t.Errorf("header %q %q, table hidden %v, 'more' shown %v", p.Label, p.Head, p.Hidden, !p.MoreHidden)
		}
		var order []string
		for _, r := range p.Rows {
			order = append(order, r[0])
		}
		if strings.Join(order, " ") != "busy mid _overflow quiet" {
			t.Errorf("tenants listed %v, want busy mid _overflow quiet (commands/s, highest first)", order)
		}
		// busy has 50 clients, mid errors; _overflow has no gauges.
		if p.Rows[0][1] != "50" || p.Rows[1][3] == "0" || p.Rows[2][1] != "0" {
			t.Errorf("rows %v", p.Rows)
		}
		path := filepath.Join(screenshotDir(t), "status-page-gateway.png")
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("gateway status page screenshot: %s", path)
	})

	t.Run("sidecar", func(t *testing.T) {
		if err := chromedp.Do(bctx, chromedp.Navigate(scSrv.URL+"/")); err != nil {
			t.Fatal(err)
		}
		var p page
		if err := waitUntil(ctx, func() bool { p = read(); return p.Polls >= 1 }); err != nil {
			t.Fatalf("%v: %+v", err, p)
		}
		if p.Label != "tenant" || p.Head != "acme" || !p.Hidden {
			t.Errorf("sidecar page: header %q %q, tenants table hidden %v", p.Label, p.Head, p.Hidden)
		}
	})
}

func waitUntil(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// screenshotDir is where screenshots go: $KEYFENCE_TEST_OUTPUT, or
// test-output/ at the top of the repository (ignored by git).
func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KEYFENCE_TEST_OUTPUT")
	if dir == "" {
		dir = filepath.Join("..", "test-output")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
