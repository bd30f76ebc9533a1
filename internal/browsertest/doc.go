// Package browsertest starts a headless Chromium for the tests that check
// a page as a user sees it (the admin status page). It never skips: when
// Chromium is missing the test fails and says how to install it.
package browsertest
