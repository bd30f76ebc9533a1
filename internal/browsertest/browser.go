package browsertest

import (
	"context"
	"os/exec"
	"slices"
	"testing"

	"github.com/chromedp/chromedp"
)

// Chromium finds Debian's chromium or fails with the install hint: the
// status page's tests must not skip silently.
func Chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed; the status page is tested in it, headless. Install it with scripts/install-test-deps.sh " +
		"(Debian: apt-get install chromium), or run `make test`, which does")
	return ""
}

// Start starts the chromium at path, headless, and returns a chromedp
// context in it and the function that stops it.
func Start(t testing.TB, ctx context.Context, path string) (context.Context, func()) {
	t.Helper()
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]), chromedp.ExecPath(path),
		chromedp.NoSandbox, // as root (CI) Chromium refuses its sandbox
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 1050),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	return bctx, func() { cancelBrowser(); cancelAlloc() }
}
