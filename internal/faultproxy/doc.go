// Package faultproxy is a small TCP fault injector that tests put between
// keyfence and Redis: it forwards loopback connections to an upstream and,
// on command, drops, refuses, delays, blackholes or resets them in the middle
// of a reply.
//
// Its one job is to let a test make the network between two processes fail in
// a chosen, repeatable way while the test keeps the addresses it already
// handed out. It is test tooling: it only listens on 127.0.0.1, only forwards
// to a loopback upstream, keeps at most one buffer per direction per
// connection, and Close stops everything it started.
//
// Typical use:
//
//	srv := redistest.StartT(t, redistest.Options{})
//	fp, err := faultproxy.New(srv.Addr())
//	if err != nil { t.Fatal(err) }
//	t.Cleanup(func() { fp.Close() })
//	// point keyfence (or a client) at fp.Addr(), then:
//	if err := fp.SetMode(faultproxy.Blackhole); err != nil { ... }
//	// ... clients time out ...
//	if err := fp.SetMode(faultproxy.Pass); err != nil { ... }
//
// The modes are Pass, Drop, Refuse, Blackhole, ResetMidReply and Delay(d),
// each documented where it is declared; a change applies at once to new and
// existing connections.
package faultproxy
