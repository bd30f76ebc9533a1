// Package redistest runs a real, throw-away redis-server for tests and for the
// `make run` demo.
//
// Tests of a Redis proxy are only worth something against the real server:
// miniredis and other fakes differ in error wording, ACL behaviour, RESP3 and
// key-spec details, which is exactly what keyfence has to get right. So the
// helpers here never skip: when redis-server is missing they fail with a
// message that says how to install it (`make test` does it for you).
//
// Each server listens on a free 127.0.0.1 port, keeps no data on disk
// (no RDB snapshots, no AOF), works in its own temporary directory and is
// killed together with that directory by Stop (or by t.Cleanup with StartT).
// On Linux the server is also killed when the test process dies, so an
// aborted `go test` leaves no stray redis-server behind.
//
// AddTenantUser creates the per-tenant upstream ACL user that keyfence's
// "defence in depth" relies on; TenantACLRules documents which commands such a
// user may run and why.
package redistest
